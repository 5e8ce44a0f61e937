package kafka

import "testing"

func TestRouter(t *testing.T) {
	r := NewRouter("healthtech", map[string]string{"billing": "finance.billing", "patient.merged": "healthtech.mpi.events"})
	for typ, want := range map[string]string{
		"patient.created":             "healthtech.patient.events",
		"clinical.lab_result.created": "healthtech.clinical.events",
		"billing.invoice_paid":        "finance.billing",
		"patient.merged":              "healthtech.mpi.events",
	} {
		for range 2 { // the second time from the cache
			if got := r.Topic(typ); got != want {
				t.Errorf("Topic(%q) = %q, want %q", typ, got, want)
			}
		}
	}
	if got := r.DLQTopic("patient"); got != "healthtech.dlq.patient" {
		t.Errorf("DLQTopic = %q", got)
	}
	for s, want := range map[string]bool{"healthtech.patient.events": true, "a_b-c.D": true, "": false, "..": false, "a b": false, "a/b": false} {
		if IsTopicName(s) != want {
			t.Errorf("IsTopicName(%q) != %v", s, want)
		}
	}
}

func TestRouterOwns(t *testing.T) {
	r := NewRouter("healthtech", map[string]string{"billing": "finance.billing"})
	for topic, want := range map[string]string{
		"healthtech.patient.events": "patient",
		"healthtech.dlq.clinical":   "clinical",
		"finance.billing":           "billing",
		"healthtech.Patient.events": "",
		"healthtech.a.b.events":     "",
		"other.patient.events":      "",
		"healthtech.patient":        "",
		"__consumer_offsets":        "",
		"healthtech..events":        "",
	} {
		d, ok := r.Owns(topic)
		if ok != (want != "") || d != want {
			t.Errorf("Owns(%q) = %q, %v; want %q", topic, d, ok, want)
		}
	}
}
