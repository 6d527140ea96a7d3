// Command scanner is an example filter API client: a content scanner that
// denies the exec (and with -kinds exec,open the open) of any file
// containing a marker byte string.
//
//	scanner -name scanner -altitude 200 -marker EVIL-MARKER [-kinds exec,open] [-socket /run/vigil/filter.sock]
//
// It answers every authorization request by reading the file the exec or
// open asked for; files without the marker are allowed and the verdict is
// marked cacheable (the agent does not ask again until the file changes).
// With -sleep it waits that long before answering (to show deadlines).
// With -rule FILE it also adds the kernel deny rule in FILE (policy rule
// YAML) for as long as it runs.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/pkg/filterclient"
)

func main() {
	socket := flag.String("socket", filterclient.DefaultSocket, "the agent's filter API socket")
	name := flag.String("name", "scanner", "client name, as approved")
	altitude := flag.Uint("altitude", 200, "altitude (unique; higher is asked first)")
	marker := flag.String("marker", "VIGIL-TEST-MARKER", "deny files containing this")
	prefix := flag.String("path-prefix", "", "only files under this prefix")
	kinds := flag.String("kinds", "exec", "what to authorize: exec, open or exec,open")
	sleep := flag.Duration("sleep", 0, "wait this long before each answer")
	rule := flag.String("rule", "", "a kernel deny rule (policy rule YAML) to add")
	noCache := flag.Bool("no-cache", false, "never mark a verdict cacheable (every exec is asked)")
	noScan := flag.Bool("no-scan", false, "allow without reading the file (to time the round trip alone)")
	realtime := flag.Bool("realtime", false, "run at real-time priority (SCHED_RR 1): a shorter wait for each request on a loaded machine")
	flag.Parse()
	if *realtime {
		if err := filterclient.Realtime(); err != nil {
			log.Fatalf("scanner: %v", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sub := &filterclient.Subscription{Kinds: strings.Split(*kinds, ",")}
	if *prefix != "" {
		sub.PathPrefix = []string{*prefix}
	}
	m := []byte(*marker)
	c, err := filterclient.Connect(ctx, filterclient.Options{
		Socket: *socket, Name: *name, Altitude: uint32(*altitude), Auth: sub,
		OnAuth: func(ev *vigilv1.Event) filterclient.Verdict {
			if *sleep > 0 {
				time.Sleep(*sleep)
			}
			if *noScan {
				return filterclient.Verdict{Allow: true, Cacheable: !*noCache}
			}
			path := filterclient.Path(ev)
			b, err := os.ReadFile(path)
			if err != nil {
				return filterclient.Verdict{Allow: true, Reason: "unreadable: " + err.Error()}
			}
			if bytes.Contains(b, m) {
				return filterclient.Verdict{Allow: false, Reason: "marker found"}
			}
			return filterclient.Verdict{Allow: true, Cacheable: !*noCache}
		},
	})
	if err != nil {
		log.Fatalf("scanner: %v", err)
	}
	defer c.Close()
	errc := make(chan error, 1)
	go func() { errc <- c.Run() }()
	if *rule != "" {
		y, err := os.ReadFile(*rule)
		if err != nil {
			log.Fatalf("scanner: %v", err)
		}
		if err := c.AddKernelRule(ctx, "rule", y); err != nil {
			log.Fatalf("scanner: kernel rule: %v", err)
		}
	}
	fmt.Printf("scanner: connected as %s (deadline %dms, %s)\n", c.Welcome.Client, c.Welcome.DeadlineMs, c.Welcome.MissMode)
	select {
	case err := <-errc:
		if err != nil {
			log.Fatalf("scanner: %v", err)
		}
	case <-ctx.Done():
	}
}
