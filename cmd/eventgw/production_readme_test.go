package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/inject"
)

// subcommandFlags are the flag sets of the subcommands the Production section uses.
func subcommandFlags() map[string]*flag.FlagSet {
	var cfg config.Config
	serve := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(serve)
	var f injectFlags
	inj := flag.NewFlagSet("inject", flag.ContinueOnError)
	f.register(inj)
	var dcfg config.Config
	return map[string]*flag.FlagSet{"serve": serve, "inject": inj, "devstack": newDevstackFlags(&dcfg, new(string))}
}

// TestREADMEProduction checks the README's Production section the way the walkthrough
// is checked: every `eventgw <subcommand>` it names is one main runs (listed in the
// usage text), every --flag on such a command line is one of that subcommand's, every
// --flag it names on its own is some subcommand's, every eventgw.io/ annotation is one
// the injector reads, every deploy/ path exists, and it says that no Docker engine runs
// here and the embedded stack stays the default.
func TestREADMEProduction(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- production:start -->")
	sec, _, ok2 := strings.Cut(rest, "<!-- production:end -->")
	if !ok || !ok2 {
		t.Fatal("README has no production markers")
	}
	flags := subcommandFlags()
	var subs []string
	for _, m := range regexp.MustCompile(`(?m)^  eventgw (\w+) `).FindAllStringSubmatch(usage, -1) {
		subs = append(subs, m[1])
	}
	// Code: fenced blocks line by line (with continued lines joined), and inline spans.
	var code []string
	for _, m := range regexp.MustCompile("(?s)```bash\n(.*?)```").FindAllStringSubmatch(sec, -1) {
		code = append(code, strings.Split(strings.ReplaceAll(m[1], "\\\n", " "), "\n")...)
	}
	for _, m := range regexp.MustCompile("`([^`\n]+(?:\n[^`\n]+)?)`").FindAllStringSubmatch(regexp.MustCompile("(?s)```.*?```").ReplaceAllString(sec, ""), -1) {
		code = append(code, strings.ReplaceAll(m[1], "\n", " "))
	}
	cmdRe := regexp.MustCompile(`(?:^|[\s/])eventgw (\w+)`)
	flagRe := regexp.MustCompile(`(?:^|\s)(--[a-z][a-z0-9-]*)`)
	seen := map[string]bool{}
	for _, c := range code {
		m := cmdRe.FindStringSubmatch(c)
		if m == nil {
			// A flag on its own, such as `--connection-secret`.
			if f := flagRe.FindStringSubmatch(c); f != nil && strings.TrimSpace(c) == f[1] {
				name := strings.TrimPrefix(f[1], "--")
				if !slices.ContainsFunc([]string{"serve", "inject", "devstack"}, func(s string) bool { return flags[s].Lookup(name) != nil }) {
					t.Errorf("README names %s, which no eventgw subcommand has", f[1])
				}
			}
			continue
		}
		sub := m[1]
		seen[sub] = true
		if !slices.Contains(subs, sub) {
			t.Errorf("README runs `eventgw %s`, which is no subcommand (%v)", sub, subs)
			continue
		}
		fs := flags[sub]
		for _, f := range flagRe.FindAllStringSubmatch(c[strings.Index(c, m[0]):], -1) {
			if fs == nil || fs.Lookup(strings.TrimPrefix(f[1], "--")) == nil {
				t.Errorf("README gives `eventgw %s` %s, which it does not have: %q", sub, f[1], c)
			}
		}
	}
	for _, want := range []string{"inject", "devstack", "serve"} {
		if !seen[want] {
			t.Errorf("the Production section never shows `eventgw %s`", want)
		}
	}
	for _, a := range regexp.MustCompile(`eventgw\.io/[a-z-]+`).FindAllString(sec, -1) {
		if a != "eventgw.io/injection" && !slices.Contains(inject.Annotations, a) {
			t.Errorf("README names annotation %s, which the injector does not read", a)
		}
	}
	paths := regexp.MustCompile(`deploy/(?:kubernetes|compose|grafana|prometheus)(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*[A-Za-z0-9_])*/?`).FindAllString(sec, -1)
	if len(paths) < 8 {
		t.Errorf("the section names only %d deploy/ paths", len(paths))
	}
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join("../..", p)); err != nil {
			t.Errorf("README names %s: %v", p, err)
		}
	}
	for _, want := range []string{"no Docker engine", "embedded stack of `make run` stays the default"} {
		if !strings.Contains(sec, want) {
			t.Errorf("the Production section does not say %q", want)
		}
	}
}
