package main

import (
	"reflect"
	"testing"
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/net/dummy.ko":  "dummy",
		"kernel/fs/nls/nls-utf8.ko.xz": "nls_utf8",
		"veth.ko.zst":                  "veth",
		"ip6_tables":                   "ip6_tables",
		"x-y":                          "x_y",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModinfoDepends(t *testing.T) {
	modinfo := []byte("license=GPL\x00depends=nf_conntrack,nf-defrag-ipv6,\x00retpoline=Y\x00")
	if got, want := parseModinfoDepends(modinfo), []string{"nf_conntrack", "nf_defrag_ipv6"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := parseModinfoDepends([]byte("depends=\x00")); got != nil {
		t.Errorf("empty depends: got %q", got)
	}
}
