// Package metrics holds the agent's Prometheus metrics, in a registry of
// its own (not the global one), and serves them over HTTP.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	Events         *prometheus.CounterVec // vigil_events_total{kind}
	EventsLost     prometheus.Counter     // vigil_events_lost_total
	EventsStored   prometheus.Counter     // vigil_events_stored_total
	StoreErrors    prometheus.Counter     // vigil_store_errors_total
	SensorAttached prometheus.Gauge       // vigil_sensor_attached
	// IntegrityViolations is the number of kernel integrity violations
	// found by the agent's last integrity check.
	IntegrityViolations prometheus.Gauge // vigil_integrity_violations
}

// New returns the metrics, registered in a new registry together with the
// Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_events_total",
			Help: "Events received from the sensors, by kind.",
		}, []string{"kind"}),
		EventsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_events_lost_total",
			Help: "Events lost before reaching userspace (kernel ring buffer full).",
		}),
		EventsStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_events_stored_total",
			Help: "Events written to the local event store.",
		}),
		StoreErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_store_errors_total",
			Help: "Failed event store operations (appends and prunes).",
		}),
		SensorAttached: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_sensor_attached",
			Help: "1 while the sensors are attached to the kernel, else 0.",
		}),
		IntegrityViolations: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_integrity_violations",
			Help: "Kernel integrity violations found by the agent's last integrity check.",
		}),
	}
	m.Registry.MustRegister(
		m.Events, m.EventsLost, m.EventsStored, m.StoreErrors, m.SensorAttached, m.IntegrityViolations,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Listen opens the metrics listener on addr (host:port), so that an address
// in use is reported before the agent goes on.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves /metrics on ln until ctx is done, then shuts the server down.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}

var ruleHitsDesc = prometheus.NewDesc("vigil_policy_rule_hits_total",
	"Decisions made by each rule of the policy in force, counted in the kernel, since the policy was applied.",
	[]string{"rule"}, nil)

// ruleHits collects per-rule hit counters from a source at scrape time.
type ruleHits func() map[string]uint64

func (ruleHits) Describe(ch chan<- *prometheus.Desc) { ch <- ruleHitsDesc }

func (f ruleHits) Collect(ch chan<- prometheus.Metric) {
	for rule, n := range f() {
		ch <- prometheus.MustNewConstMetric(ruleHitsDesc, prometheus.CounterValue, float64(n), rule)
	}
}

// CollectRuleHits registers source as the per-rule hit counters,
// read at each scrape. It is called once.
func (m *Metrics) CollectRuleHits(source func() map[string]uint64) {
	m.Registry.MustRegister(ruleHits(source))
}
