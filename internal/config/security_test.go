package config

import (
	"slices"
	"strings"
	"testing"
)

func TestTenantsFlag(t *testing.T) {
	t.Setenv("EVENTGW_TENANTS", "")
	const a, b = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "0b7d6c5e-4f3a-4b2c-8d1e-9f8a7b6c5d4e"
	c := devConfig(t, "--tenants= "+strings.ToUpper(a)+", "+b+","+a)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got, _ := c.TenantList()
	if want := []string{b, a}; !slices.Equal(got, want) {
		t.Errorf("TenantList = %v, want %v (canonical, sorted, once each)", got, want)
	}
	none := devConfig(t)
	if got, err := none.TenantList(); got != nil || err != nil {
		t.Errorf("no --tenants: %v, %v; want nil (any tenant)", got, err)
	}
	for _, bad := range []string{"acme", a + ",acme", "00000000-0000-0000-0000-000000000000", ",", "{" + a + "}"} {
		c := devConfig(t, "--tenants="+bad)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "--tenants") {
			t.Errorf("--tenants=%q: %v, want an error naming --tenants", bad, err)
		}
	}
}
