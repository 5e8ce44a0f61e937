package app

// tenantSet is the tenant allow-list as a set (nil: any tenant).
func tenantSet(ids []string) map[string]bool {
	if len(ids) == 0 {
		return nil
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}
