// Package fleetstream carries the fleet server's events and change notices
// over NATS (JetStream), for `vigil server --stream`:
//
//   - Sink is the EventSink the agents' uploads go to: each upload is
//     published to the JetStream stream VIGIL_EVENTS (subject
//     vigil.events.HOST) and the call returns once JetStream has stored
//     it. Reads (events, queue) go to the analytics store.
//   - Apply consumes the stream into the analytics store (any
//     fleetdb.EventSink: PostgreSQL in the scale-out deployment, the
//     SQLite file with an embedded stream) through the durable consumer
//     vigil-apply, acknowledging each upload after it is stored. The
//     consumer has a pinned priority group: one replica at a time applies,
//     in stream order (a host's uploads must be applied in order for the
//     loss count to be right); when it goes away another takes over.
//   - Changed/OnChanged are the "bundles changed" notices replicas send
//     each other on the core NATS subject vigil.fleet.changed, so an agent
//     watching replica B learns of a rule change made on replica A.
//
// Embedded runs nats-server in the process (JetStream on a directory of
// the server's state), for a single server that wants the stream without
// running NATS.
package fleetstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
)

// Names on NATS.
const (
	StreamName     = "VIGIL_EVENTS"
	SubjectPrefix  = "vigil.events."
	ConsumerName   = "vigil-apply"
	PriorityGroup  = "apply"
	ChangedSubject = "vigil.fleet.changed"
	hostHeader     = "Vigil-Host"
)

// Timing of the consumer. The pin moves to another replica only after
// PinnedTTL without pulls; by then AckWait has passed, so what the gone
// replica held unacknowledged is redelivered (first) to the new one.
const (
	AckWait   = 10 * time.Second
	PinnedTTL = 20 * time.Second
)

// Embedded starts a NATS server with JetStream in this process, storing
// in dir; it accepts in-process connections only.
func Embedded(dir string) (*server.Server, error) {
	ns, err := server.NewServer(&server.Options{ServerName: "vigil-embedded", JetStream: true, StoreDir: dir,
		DontListen: true, NoSigs: true, NoLog: true})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS: not ready within 30 s")
	}
	return ns, nil
}

// Conn is a connection to NATS with the stream made.
type Conn struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	stream jetstream.Stream
}

// Connect connects to url (nats://...) or, with url "", to the embedded
// server ns, and makes or updates the stream.
func Connect(ctx context.Context, url string, ns *server.Server, name string) (*Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second)}
	if ns != nil {
		opts = append(opts, nats.InProcessServer(ns))
		url = ""
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "agents' event uploads, until applied to the analytics store",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy, // an upload leaves the stream when applied
		Storage:     jetstream.FileStorage,
		Duplicates:  2 * time.Minute, // a retried publish of the same upload is stored once
		MaxAge:      7 * 24 * time.Hour,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("JetStream stream %s: %w", StreamName, err)
	}
	return &Conn{NC: nc, JS: js, stream: st}, nil
}

// Close drains the connection.
func (c *Conn) Close() { c.NC.Close() }

// Changed tells every replica that host's bundle or standing changed.
func (c *Conn) Changed(host string) error {
	return c.NC.Publish(ChangedSubject, []byte(host))
}

// OnChanged calls fn for every change notice (its own included).
func (c *Conn) OnChanged(fn func(host string)) (func(), error) {
	sub, err := c.NC.Subscribe(ChangedSubject, func(m *nats.Msg) { fn(string(m.Data)) })
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", ChangedSubject, err)
	}
	return func() { sub.Unsubscribe() }, nil
}

// Sink publishes uploads to the stream; reads go to Store.
type Sink struct {
	C     *Conn
	Store fleetdb.EventSink // the analytics store Apply fills
}

var _ fleetdb.EventSink = (*Sink)(nil)

// Append publishes u and returns once JetStream stored it. The upload is
// applied later (Apply): the returned last id is u's ThroughID, what the
// agent may move its cursor to now that the upload cannot be lost.
func (s *Sink) Append(ctx context.Context, u fleetdb.Upload) (uint64, error) {
	if u.ThroughID < u.AfterID {
		return 0, fmt.Errorf("upload from %s: through id %d before after id %d", u.Host, u.ThroughID, u.AfterID)
	}
	body, err := proto.Marshal(&fleetv1.UploadEventsRequest{AfterId: u.AfterID, ThroughId: u.ThroughID, Events: u.Events})
	if err != nil {
		return 0, fmt.Errorf("upload from %s: %w", u.Host, err)
	}
	sum := sha256.Sum256(body)
	msg := &nats.Msg{Subject: SubjectPrefix + u.Host, Data: body, Header: nats.Header{}}
	msg.Header.Set(hostHeader, u.Host)
	// The same upload retried is the same message (deduplicated); a new
	// enrollment's uploads of the same ids differ in content.
	id := u.Host + ":" + strconv.FormatUint(u.AfterID, 10) + ":" + strconv.FormatUint(u.ThroughID, 10) + ":" + hex.EncodeToString(sum[:8])
	if _, err := s.C.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return 0, fmt.Errorf("upload from %s: publish: %w", u.Host, err)
	}
	return u.ThroughID, nil
}

// OnStored sets fn on the analytics store, where the consumer stores
// what was published (Apply).
func (s *Sink) OnStored(fn fleetdb.StoredFunc) error {
	n, ok := s.Store.(fleetdb.StoreNotifier)
	if !ok {
		return fmt.Errorf("the analytics store (%T) cannot tell what it stored", s.Store)
	}
	return n.OnStored(fn)
}

func (s *Sink) Events(ctx context.Context, host string, limit int) ([]fleetdb.HostEvent, error) {
	return s.Store.Events(ctx, host, limit)
}

func (s *Sink) QueryEvents(ctx context.Context, f fleetdb.EventFilter) ([]fleetdb.HostEvent, int, error) {
	return s.Store.QueryEvents(ctx, f)
}

func (s *Sink) Queue(ctx context.Context) ([]fleetdb.QueueEntry, error) { return s.Store.Queue(ctx) }

func (s *Sink) Dequeue(ctx context.Context, sha256 string) error { return s.Store.Dequeue(ctx, sha256) }

func (s *Sink) DequeueSigner(ctx context.Context, keyID string) ([]string, error) {
	return s.Store.DequeueSigner(ctx, keyID)
}

// Stats counts what Apply did.
type Stats struct {
	Applied  atomic.Uint64 // uploads stored
	Events   atomic.Uint64 // events in them
	Refused  atomic.Uint64 // uploads that can never be stored (unknown host, bad range, undecodable): terminated, logged
	Retries  atomic.Uint64 // store errors retried
	Batches  atomic.Uint64 // transactions that stored more than one upload (fleetdb.BatchAppender)
	LastDone atomic.Int64  // unix ns of the last upload stored
}

// Pending returns how many uploads wait in the stream to be applied.
func (c *Conn) Pending(ctx context.Context) (uint64, error) {
	info, err := c.stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// Consumer makes or updates the durable consumer Apply reads.
func (c *Conn) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:        ConsumerName,
		Description:    "applies uploads to the analytics store, one replica at a time",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        AckWait,
		MaxAckPending:  4096,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      PinnedTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("JetStream consumer %s: %w", ConsumerName, err)
	}
	return cons, nil
}

// Apply consumes the stream through cons into store until ctx is done. A
// store error is retried (the upload kept, in order) until it succeeds;
// an upload that can never be stored is terminated and logged.
func (c *Conn) Apply(ctx context.Context, cons jetstream.Consumer, store fleetdb.EventSink, stats *Stats, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(250*time.Millisecond), jetstream.FetchPriorityGroup(PriorityGroup))
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("stream fetch", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			log.Debug("stream fetch", "err", err)
		}
		c.applyBatch(ctx, store, msgs, stats, log)
	}
}

// applyBatch stores msgs in one transaction where the store can
// (fleetdb.BatchAppender), and one by one where it cannot or where the
// batch holds an upload that can never be stored.
func (c *Conn) applyBatch(ctx context.Context, store fleetdb.EventSink, msgs []jetstream.Msg, stats *Stats, log *slog.Logger) {
	ba, ok := store.(fleetdb.BatchAppender)
	if !ok || len(msgs) < 2 {
		for _, m := range msgs {
			c.applyOne(ctx, store, m, stats, log)
		}
		return
	}
	var (
		us   []fleetdb.Upload
		good []jetstream.Msg
	)
	for _, m := range msgs {
		u, err := decode(m)
		if err != nil {
			log.Error("stream: upload cannot be stored: dropped", "subject", m.Subject(), "err", err)
			stats.Refused.Add(1)
			m.Term()
			continue
		}
		us, good = append(us, u), append(good, m)
	}
	for backoff := 100 * time.Millisecond; len(us) > 0; backoff = min(2*backoff, 5*time.Second) {
		_, err := ba.AppendBatch(ctx, us)
		if err == nil {
			stats.Batches.Add(1)
			break
		}
		if errors.Is(err, fleetdb.ErrNotFound) {
			// Find and drop the one that can never be stored, in order.
			for _, m := range good {
				c.applyOne(ctx, store, m, stats, log)
			}
			return
		}
		if ctx.Err() != nil {
			return // not acknowledged: redelivered to whoever applies next
		}
		stats.Retries.Add(1)
		log.Warn("stream: storing uploads failed, retrying", "uploads", len(us), "err", err)
		for _, m := range good {
			m.InProgress()
		}
		sleep(ctx, backoff)
	}
	for i, m := range good {
		m.Ack()
		stats.Applied.Add(1)
		stats.Events.Add(uint64(len(us[i].Events)))
	}
	stats.LastDone.Store(time.Now().UnixNano())
}

// decode is the upload m carries.
func decode(m jetstream.Msg) (fleetdb.Upload, error) {
	host := m.Headers().Get(hostHeader)
	var req fleetv1.UploadEventsRequest
	if err := proto.Unmarshal(m.Data(), &req); err != nil {
		return fleetdb.Upload{}, fmt.Errorf("decode: %w", err)
	}
	if host == "" {
		return fleetdb.Upload{}, errors.New("no host header")
	}
	if req.GetThroughId() < req.GetAfterId() {
		return fleetdb.Upload{}, fmt.Errorf("through id %d before after id %d", req.GetThroughId(), req.GetAfterId())
	}
	return fleetdb.Upload{Host: host, AfterID: req.GetAfterId(), ThroughID: req.GetThroughId(), Events: req.GetEvents()}, nil
}

func (c *Conn) applyOne(ctx context.Context, store fleetdb.EventSink, m jetstream.Msg, stats *Stats, log *slog.Logger) {
	u, err := decode(m)
	if err != nil {
		log.Error("stream: upload cannot be stored: dropped", "subject", m.Subject(), "err", err)
		stats.Refused.Add(1)
		m.Term()
		return
	}
	host := u.Host
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		_, err := store.Append(ctx, u)
		if err == nil {
			break
		}
		if errors.Is(err, fleetdb.ErrNotFound) {
			log.Error("stream: upload cannot be stored: dropped", "host", host, "after_id", u.AfterID, "through_id", u.ThroughID, "err", err)
			stats.Refused.Add(1)
			m.Term()
			return
		}
		if ctx.Err() != nil {
			return // not acknowledged: redelivered to whoever applies next
		}
		stats.Retries.Add(1)
		log.Warn("stream: storing an upload failed, retrying", "host", host, "err", err)
		m.InProgress() // keep it: later uploads of the host must not pass it
		sleep(ctx, backoff)
	}
	// Applying again is harmless (ids at or below the host's last id are
	// skipped), so a lost ack costs a redelivery, not a duplicate.
	m.Ack()
	stats.Applied.Add(1)
	stats.Events.Add(uint64(len(u.Events)))
	stats.LastDone.Store(time.Now().UnixNano())
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
