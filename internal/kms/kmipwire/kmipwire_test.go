package kmipwire

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// seedMessages are well-formed requests and responses.
func seedMessages() [][]byte {
	v := []byte("0123456789abcdef")
	reg := kmip.NewRequestMessage(kmip.V1_4,
		&payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
			TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
				{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "k", NameType: kmip.NameTypeUninterpretedTextString}},
				{AttributeName: "x-a", AttributeValue: "b"},
			}},
			Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypePassword, KeyBlock: kmip.KeyBlock{
				KeyFormatType: kmip.KeyFormatTypeOpaque,
				KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &v}}}}}},
		&payloads.GetRequestPayload{UniqueIdentifier: "1"},
		&payloads.LocateRequestPayload{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: "g"}}},
		&payloads.RevokeRequestPayload{UniqueIdentifier: "1", RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeKeyCompromise}},
	)
	now := time.Now().Truncate(time.Second)
	resp := kmip.ResponseMessage{Header: kmip.ResponseHeader{ProtocolVersion: kmip.V1_4, TimeStamp: now, BatchCount: 2},
		BatchItem: []kmip.ResponseBatchItem{
			{Operation: kmip.OperationGet, ResultStatus: kmip.ResultStatusSuccess, ResponsePayload: &payloads.GetResponsePayload{
				ObjectType: kmip.ObjectTypeSecretData, UniqueIdentifier: "1",
				Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypePassword, KeyBlock: kmip.KeyBlock{
					KeyFormatType: kmip.KeyFormatTypeOpaque,
					KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &v}}}}}}},
			{Operation: kmip.OperationGet, ResultStatus: kmip.ResultStatusOperationFailed, ResultReason: kmip.ResultReasonItemNotFound, ResultMessage: "no"},
		}}
	return [][]byte{ttlv.MarshalTTLV(&reg), ttlv.MarshalTTLV(&resp)}
}

func TestValidateAcceptsWellFormed(t *testing.T) {
	seeds := seedMessages()
	if err := Validate(seeds[0], kmip.TagRequestMessage); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeRequest(seeds[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeResponse(seeds[1]); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMessage(bytes.NewReader(seeds[0]), kmip.TagRequestMessage, 0, nil)
	if err != nil || !bytes.Equal(got, seeds[0]) {
		t.Fatalf("ReadMessage = %d bytes, %v", len(got), err)
	}
}

func TestRejectsMalformed(t *testing.T) {
	ok := seedMessages()[0]
	cases := map[string][]byte{
		"short":             {0x42, 0, 0x78, 1},
		"wrong tag":         append([]byte{0x42, 0, 0x7b}, ok[3:]...),
		"truncated":         ok[:len(ok)-8],
		"integer too short": {0x42, 0, 0x78, 1, 0, 0, 0, 16, 0x42, 0, 0x0d, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0},
		"inner overrun":     {0x42, 0, 0x78, 1, 0, 0, 0, 8, 0x42, 0, 0x0d, 1, 0, 0, 0, 2},
		"stray bytes":       {0x42, 0, 0x78, 1, 0, 0, 0, 8, 0x42, 0, 0x0d, 1, 0, 0, 0, 0, 0},
		"bad type":          {0x42, 0, 0x78, 1, 0, 0, 0, 8, 0x42, 0, 0x0d, 0x0b, 0, 0, 0, 0},
		"non-zero padding":  {0x42, 0, 0x78, 1, 0, 0, 0, 16, 0x42, 0, 0x0d, 8, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0, 0},
		"bad utf8":          {0x42, 0, 0x78, 1, 0, 0, 0, 16, 0x42, 0, 0x0d, 7, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0},
		"length disagrees":  {0x42, 0, 0x78, 1, 0, 0, 0, 24, 0x42, 0, 0x0d, 1, 0, 0, 0, 0},
		"huge inner length": {0x42, 0, 0x78, 1, 0, 0, 0, 8, 0x42, 0, 0x0d, 8, 0xff, 0xff, 0xff, 0xf8},
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			if err := Validate(msg, kmip.TagRequestMessage); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Validate = %v, want ErrMalformed", err)
			}
		})
	}
	// Deep nesting.
	deep := []byte{}
	for range 40 {
		deep = append([]byte{0x42, 0, 0x0d, 1, 0, 0, 0, byte(len(deep))}, deep...)
	}
	deep = append([]byte{0x42, 0, 0x78, 1, 0, 0, 0, byte(len(deep))}, deep...)
	if err := Validate(deep, kmip.TagRequestMessage); !errors.Is(err, ErrMalformed) {
		t.Errorf("deep nesting: %v", err)
	}
}

func TestReadMessageLimits(t *testing.T) {
	big := []byte{0x42, 0, 0x78, 1, 0x00, 0x20, 0, 0}
	if _, err := ReadMessage(bytes.NewReader(big), kmip.TagRequestMessage, 1024, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized: %v", err)
	}
	if _, err := ReadMessage(bytes.NewReader(nil), kmip.TagRequestMessage, 0, nil); !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	ok := seedMessages()[0]
	if _, err := ReadMessage(bytes.NewReader(ok[:20]), kmip.TagRequestMessage, 0, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut body: %v, want io.ErrUnexpectedEOF", err)
	}
}

// FuzzValidatedDecode checks that whatever Validate accepts, kmip-go's
// decoder takes without panicking (no recover here).
func FuzzValidatedDecode(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if Validate(data, kmip.TagRequestMessage) == nil {
			var m kmip.RequestMessage
			_ = ttlv.UnmarshalTTLV(data, &m)
		}
		if Validate(data, kmip.TagResponseMessage) == nil {
			var m kmip.ResponseMessage
			_ = ttlv.UnmarshalTTLV(data, &m)
		}
	})
}
