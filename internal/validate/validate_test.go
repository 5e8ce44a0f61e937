package validate

import "testing"

func TestIsEventType(t *testing.T) {
	for s, want := range map[string]bool{
		"patient.created":         true,
		"clinical.lab_result.v2":  true,
		"a.b":                     true,
		"patient":                 false,
		"Patient.created":         false,
		"patient..created":        false,
		"patient.created.":        false,
		".patient.created":        false,
		"patient.1created":        false,
		"patient.cre-ated":        false,
		"patient.created\n":       false,
		"":                        false,
		"patient.créé":            false,
		"billing.invoice_paid_v1": true,
	} {
		if got := IsEventType(s); got != want {
			t.Errorf("IsEventType(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestUUID(t *testing.T) {
	ok := []string{"6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A"}
	bad := []string{"", "6f1c2a9e8d1b4a4e9f0e2b9c1d3e4f5a", "{6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5}", "urn:uuid:6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e", "zf1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"}
	for _, s := range ok {
		if err := UUID("id", s); err != nil {
			t.Errorf("UUID(%q) = %v", s, err)
		}
	}
	for _, s := range bad {
		if err := UUID("id", s); err == nil {
			t.Errorf("UUID(%q) accepted", s)
		}
	}
}

func TestNameAndText(t *testing.T) {
	if err := Name("n", "prm-service", 100, true); err != nil {
		t.Error(err)
	}
	if err := Name("n", "prm service", 100, true); err == nil {
		t.Error("space accepted")
	}
	if err := Name("n", "", 100, true); err == nil {
		t.Error("empty required accepted")
	}
	if err := Text("t", "a\x00b", 10); err == nil {
		t.Error("NUL accepted")
	}
	if err := Text("t", "abcdefghijk", 10); err == nil {
		t.Error("long text accepted")
	}
	e := Prefix("events[3]", Errorf("tenant_id", "bad"))
	if e.Error() != "events[3].tenant_id: bad" {
		t.Errorf("Prefix: %v", e)
	}
}
