package lifecycle

import (
	"context"
	"errors"

	"github.com/sedboot/sedboot/internal/kms/kmscheck"
)

// KMSCheck runs the key-server check ("sedctl kms check") over the
// servers of the array's own client, with the array's identity, and the
// administrator's as the second identity when it is another one.
// requireLock counts a server that cannot enforce the cryptographic lock
// as unfit.
func (a *Array) KMSCheck(ctx context.Context, requireLock bool) (*kmscheck.Report, error) {
	agent, err := a.agent()
	if err != nil {
		return nil, err
	}
	cfg := kmscheck.Config{KMS: agent.Config(), RequireLock: requireLock, Prefix: a.prefix() + "-check"}
	if a.Admin != nil && ClientIdentity(a.Admin.Config()) != ClientIdentity(agent.Config()) {
		other := a.Admin.Config()
		cfg.Other = &other
	}
	return kmscheck.Check(ctx, cfg)
}

// CheckFit runs KMSCheck and returns an error naming every fatal problem
// unless every server is fit: an EnableOptions.Check for callers that show
// no report.
func (a *Array) CheckFit(ctx context.Context) error {
	if a.Doc.KMS == nil {
		return errors.New("no key servers configured (kms section missing)")
	}
	rep, err := a.KMSCheck(ctx, false)
	if err != nil {
		return err
	}
	return rep.Err()
}
