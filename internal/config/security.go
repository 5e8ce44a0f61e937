package config

import (
	"errors"
	"flag"
	"fmt"
	"sort"

	"github.com/eventgw/eventgw/internal/validate"
)

// Security is who may call the sidecar and for which tenants (README "Production",
// "Secure connections").
type Security struct {
	// Tenants is --tenants: the tenant ids (UUIDs, comma-separated) this sidecar serves;
	// empty: any tenant.
	Tenants string
}

func (s *Security) register(fs *flag.FlagSet) {
	fs.StringVar(&s.Tenants, "tenants", "", "tenant allow-list: comma-separated tenant UUIDs this sidecar serves; a call naming another tenant is refused with PERMISSION_DENIED and Subscribe skips other tenants' events (empty: any tenant)")
}

func (s *Security) validate() []error {
	var errs []error
	if _, err := s.TenantList(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// TenantList parses --tenants into canonical (lowercase) UUIDs, sorted and without
// repeats; nil when empty (any tenant).
func (s *Security) TenantList() ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, t := range splitList(s.Tenants) {
		c, err := validate.CanonicalUUID("tenant", t)
		if err != nil {
			return nil, fmt.Errorf("--tenants: %q is not a tenant UUID such as 6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a (the nil UUID is not one)", t)
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 && s.Tenants != "" {
		return nil, errors.New("--tenants: name at least one tenant UUID, or leave it empty for any tenant")
	}
	sort.Strings(out)
	return out, nil
}
