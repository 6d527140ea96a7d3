// Command jsonl is an example notify-only filter API client: it writes the
// events it subscribed to as JSON lines.
//
//	jsonl -name jsonl -altitude 100 [-kind exec -kind image_load] [-out FILE]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/pkg/filterclient"
)

func main() {
	socket := flag.String("socket", filterclient.DefaultSocket, "the agent's filter API socket")
	name := flag.String("name", "jsonl", "client name, as approved")
	altitude := flag.Uint("altitude", 100, "altitude (unique)")
	kinds := flag.String("kinds", "", "comma-separated event kinds (default: all)")
	out := flag.String("out", "-", "file to append to (- is stdout)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := os.Stdout
	if *out != "-" {
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	sub := filterclient.Subscription{}
	if *kinds != "" {
		sub.Kinds = strings.Split(*kinds, ",")
	}
	c, err := filterclient.Connect(ctx, filterclient.Options{
		Socket: *socket, Name: *name, Altitude: uint32(*altitude), Notify: []filterclient.Subscription{sub},
		OnEvent: func(ev *vigilv1.Event) {
			b, err := protojson.Marshal(ev)
			if err == nil {
				bw.Write(b)
				bw.WriteByte('\n')
				bw.Flush()
			}
		},
	})
	if err != nil {
		log.Fatalf("jsonl: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(os.Stderr, "jsonl: connected as %s\n", c.Welcome.Client)
	errc := make(chan error, 1)
	go func() { errc <- c.Run() }()
	select {
	case err := <-errc:
		if err != nil {
			log.Fatalf("jsonl: %v", err)
		}
	case <-ctx.Done():
	}
}
