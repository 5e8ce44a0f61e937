package event

import (
	"time"

	"github.com/IBM/sarama"
)

// Header names of the CloudEvents Kafka protocol binding, binary content mode.
const (
	HeaderID            = "ce_id"
	HeaderType          = "ce_type"
	HeaderSource        = "ce_source"
	HeaderTime          = "ce_time"
	HeaderSpecVersion   = "ce_specversion"
	HeaderTenantID      = "ce_tenantid"
	HeaderCorrelationID = "ce_correlationid"
	HeaderCausationID   = "ce_causationid"
	HeaderUserID        = "ce_userid"
	HeaderSubject       = "ce_subject"
	HeaderDataSchema    = "ce_dataschema"
	HeaderContentType   = "content-type"
	ExtensionPrefix     = "ce_"

	ContentTypeJSON = "application/json"
	ContentTypeAvro = "application/avro"
)

var (
	hID            = []byte(HeaderID)
	hType          = []byte(HeaderType)
	hSource        = []byte(HeaderSource)
	hTime          = []byte(HeaderTime)
	hSpecVersion   = []byte(HeaderSpecVersion)
	hTenantID      = []byte(HeaderTenantID)
	hCorrelationID = []byte(HeaderCorrelationID)
	hCausationID   = []byte(HeaderCausationID)
	hUserID        = []byte(HeaderUserID)
	hSubject       = []byte(HeaderSubject)
	hDataSchema    = []byte(HeaderDataSchema)
	hContentType   = []byte(HeaderContentType)
	vSpecVersion   = []byte("1.0")
	vJSON          = []byte(ContentTypeJSON)
	vAvro          = []byte(ContentTypeAvro)
)

// Headers builds the CloudEvents envelope of e. dataSchema is the schema reference
// ("" for JSON). All header values share one backing array: two allocations per event.
func (e *Event) Headers(dataSchema string) []sarama.RecordHeader {
	hs, _ := e.AppendHeaders(nil, nil, dataSchema)
	return hs
}

// AppendHeaders is Headers appending to hs, with the header values appended to buf
// when its spare capacity holds them all (else written into one new array): a caller
// with room for both allocates nothing. It returns hs and buf extended.
func (e *Event) AppendHeaders(hs []sarama.RecordHeader, buf []byte, dataSchema string) ([]sarama.RecordHeader, []byte) {
	n := 8 + len(e.Metadata) + len(e.Extra)
	size := len(e.ID) + len(e.Type) + len(e.Source) + len(time.RFC3339Nano) + len(e.TenantID) +
		len(e.CorrelationID) + len(e.CausationID) + len(e.UserID) + len(e.Subject) + len(dataSchema)
	for k, v := range e.Metadata {
		size += len(ExtensionPrefix) + len(k) + len(v)
	}
	for _, h := range e.Extra {
		size += len(h.Key) + len(h.Value)
	}
	if cap(buf)-len(buf) < size {
		buf = make([]byte, 0, size)
	}
	if cap(hs)-len(hs) < n {
		hs = append(make([]sarama.RecordHeader, 0, len(hs)+n), hs...)
	}
	add := func(k []byte, v string) {
		start := len(buf)
		buf = append(buf, v...)
		hs = append(hs, sarama.RecordHeader{Key: k, Value: buf[start:len(buf):len(buf)]})
	}
	hs = append(hs, sarama.RecordHeader{Key: hSpecVersion, Value: vSpecVersion})
	add(hID, e.ID)
	add(hType, e.Type)
	add(hSource, e.Source)
	start := len(buf)
	buf = e.Time.UTC().AppendFormat(buf, time.RFC3339Nano)
	hs = append(hs, sarama.RecordHeader{Key: hTime, Value: buf[start:len(buf):len(buf)]})
	add(hTenantID, e.TenantID)
	add(hCorrelationID, e.CorrelationID)
	if e.CausationID != "" {
		add(hCausationID, e.CausationID)
	}
	if e.UserID != "" {
		add(hUserID, e.UserID)
	}
	if e.Subject != "" {
		add(hSubject, e.Subject)
	}
	if dataSchema != "" {
		add(hDataSchema, dataSchema)
		hs = append(hs, sarama.RecordHeader{Key: hContentType, Value: vAvro})
	} else {
		hs = append(hs, sarama.RecordHeader{Key: hContentType, Value: vJSON})
	}
	for k, v := range e.Metadata {
		start := len(buf)
		buf = append(buf, ExtensionPrefix...)
		buf = append(buf, k...)
		key := buf[start:len(buf):len(buf)]
		add(key, v)
	}
	for _, h := range e.Extra {
		start := len(buf)
		buf = append(buf, h.Key...)
		add(buf[start:len(buf):len(buf)], h.Value)
	}
	return hs, buf
}
