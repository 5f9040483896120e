package kmsserver_test

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

	"github.com/sedboot/sedboot/internal/kms/kmipwire"
	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/pki"
)

// seeds are well-formed requests covering every operation kmsd serves.
func seeds() [][]byte {
	v := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now().Truncate(time.Second)
	idx := int32(0)
	msgs := []kmip.RequestMessage{
		kmip.NewRequestMessage(kmip.V1_1, &payloads.DiscoverVersionsRequestPayload{ProtocolVersion: []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_2}}),
		kmip.NewRequestMessage(kmip.V1_4, &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations, kmip.QueryFunctionObjects}}),
		kmip.NewRequestMessage(kmip.V1_4, &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
			TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
				{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "k", NameType: kmip.NameTypeUninterpretedTextString}},
				{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: "g"},
				{AttributeName: "x-sedboot-array", AttributeValue: "A1"},
				{AttributeName: kmip.AttributeNameApplicationSpecificInformation, AttributeValue: kmip.ApplicationSpecificInformation{ApplicationNamespace: "n", ApplicationData: "d"}},
			}},
			Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypePassword, KeyBlock: kmip.KeyBlock{
				KeyFormatType: kmip.KeyFormatTypeOpaque,
				KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &v}}}}}}),
		kmip.NewRequestMessage(kmip.V1_4,
			&payloads.LocateRequestPayload{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: "g"}}},
			&payloads.GetRequestPayload{UniqueIdentifier: "1"},
			&payloads.GetAttributesRequestPayload{UniqueIdentifier: "1"},
			&payloads.GetAttributeListRequestPayload{UniqueIdentifier: "1"},
			&payloads.ActivateRequestPayload{UniqueIdentifier: "1"},
			&payloads.AddAttributeRequestPayload{UniqueIdentifier: "1", Attribute: kmip.Attribute{AttributeName: "x-a", AttributeValue: "b"}},
			&payloads.ModifyAttributeRequestPayload{UniqueIdentifier: "1", Attribute: kmip.Attribute{AttributeName: kmip.AttributeNameExtractable, AttributeValue: false}},
			&payloads.DeleteAttributeRequestPayload{UniqueIdentifier: "1", AttributeName: "x-a", AttributeIndex: &idx},
		),
		kmip.NewRequestMessage(kmip.V1_2,
			&payloads.RevokeRequestPayload{UniqueIdentifier: "1", RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeKeyCompromise}, CompromiseOccurrenceDate: &now},
			&payloads.DestroyRequestPayload{UniqueIdentifier: "1"},
		),
	}
	var out [][]byte
	for i := range msgs {
		b, err := kmipwire.Encode(&msgs[i])
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzHandleMessage feeds arbitrary bytes to kmsd's request handling as
// an authenticated administrator would send them: it must never panic
// (kmipwire and the handler contain decoder and handler failures) and
// must always answer with a well-formed response.
func FuzzHandleMessage(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Add([]byte("B\x00x\x01\x00\x00\x00\x0200000000"))
	dir := f.TempDir()
	ca, err := pki.NewCA("fuzz", pki.ECDSAP256)
	if err != nil {
		f.Fatal(err)
	}
	cert, err := ca.Issue(pki.Request{CommonName: "kmsd", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		f.Fatal(err)
	}
	s, err := kmsserver.New(kmsserver.Options{DBPath: filepath.Join(dir, "fuzz.db"), MasterKey: make([]byte, kmsserver.MasterKeySize),
		TLS:    &tls.Config{Certificates: []tls.Certificate{cert.TLSCertificate()}, ClientCAs: ca.Pool()},
		Policy: kmsserver.Policy{Admins: []string{"fuzzer"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Shutdown(time.Second) })
	f.Fuzz(func(t *testing.T, data []byte) {
		out := s.HandleAs(context.Background(), "fuzzer", data)
		resp, err := kmipwire.DecodeResponse(out)
		if err != nil {
			t.Fatalf("kmsd answered with a malformed response: %v", err)
		}
		// A General Failure here means a handler panicked (kmip-go's
		// executor and kmsd's loop turn panics into that reason).
		for _, bi := range resp.BatchItem {
			if bi.ResultReason == kmip.ResultReasonGeneralFailure {
				t.Fatalf("handler failure: %s", bi.ResultMessage)
			}
		}
	})
}
