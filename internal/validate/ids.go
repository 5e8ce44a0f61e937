package validate

import (
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Ids. Every UUID a request carries (tenant, aggregate, event, saga, task and
// failed-event ids) is parsed once, at the gRPC edge, into its canonical form: the
// 8-4-4-4-12 hex form in lowercase. Letters may come in either case (RFC 9562: UUIDs
// compare case-insensitively), so 6F1C2A9E-… and 6f1c2a9e-… name the same tenant,
// aggregate or event everywhere: in PostgreSQL, in Go maps, in Kafka keys and in
// ce_tenantid. Other spellings (braces, a urn:uuid: prefix, no hyphens) are refused, and
// so is the nil UUID 00000000-0000-0000-0000-000000000000: it names nothing (it is what
// a client sends when it forgot to set an id).

const uuidExample = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"

// CanonicalUUID answers s as a canonical lowercase UUID, or an *Error for field when s
// is empty, not in 8-4-4-4-12 form, or the nil UUID.
func CanonicalUUID(field, s string) (string, error) {
	if s == "" {
		return "", Errorf(field, "is required (a UUID)")
	}
	if len(s) != 36 {
		return "", Errorf(field, "must be a UUID such as %s", uuidExample)
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return "", Errorf(field, "must be a UUID such as %s", uuidExample)
	}
	if u == uuid.Nil {
		return "", Errorf(field, "must not be the nil UUID")
	}
	if isLowerHex(s) {
		return s, nil // already canonical: no allocation
	}
	return u.String(), nil
}

// OptionalCanonicalUUID is CanonicalUUID for a field that may be empty ("" stays "").
func OptionalCanonicalUUID(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return CanonicalUUID(field, s)
}

// CanonicalUUIDOrNil is CanonicalUUID that also accepts the nil UUID: for the
// dead-letter service's tenant_id only, where the nil UUID stands for "no valid tenant"
// (consumed records whose ce_tenantid was not a UUID are kept under it).
func CanonicalUUIDOrNil(field, s string) (string, error) {
	if s == uuid.Nil.String() {
		return s, nil
	}
	return CanonicalUUID(field, s)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'F' {
			return false
		}
	}
	return true
}

// Times. Timestamps must lie in 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z,
// the range of google.protobuf.Timestamp, RFC 3339 (a four-digit year) and so of the
// CloudEvents time attribute.

// Timestamp checks a request's timestamp (nil is allowed: zero time) and converts it.
func Timestamp(field string, t *timestamppb.Timestamp) (time.Time, error) {
	if t == nil {
		return time.Time{}, nil
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, Errorf(field, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
	}
	return t.AsTime(), nil
}

// Time checks that t lies within the range above.
func Time(field string, t time.Time) error {
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return Errorf(field, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
	}
	return nil
}
