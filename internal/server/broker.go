package server

import (
	"sync"
	"sync/atomic"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// subBuffer is how many events a subscriber may fall behind before it is
// marked lagged (and catches up from the store).
const subBuffer = 4096

// Broker fans newly stored events out to followers. Publish never blocks:
// a subscriber whose buffer is full misses the event and is marked lagged;
// since events are published only after they are stored, it catches up by
// reading the store from the last id it saw.
type Broker struct {
	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

// NewBroker returns an empty broker.
func NewBroker() *Broker {
	return &Broker{subs: make(map[*Subscription]struct{})}
}

// Subscription receives events published after it was made.
type Subscription struct {
	b      *Broker
	c      chan *vigilv1.Event
	lagged atomic.Bool
}

// Subscribe returns a new subscription. Its channel is closed when the
// broker is closed or the subscription is.
func (b *Broker) Subscribe() *Subscription {
	s := &Subscription{b: b, c: make(chan *vigilv1.Event, subBuffer)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		close(s.c)
		return s
	}
	b.subs[s] = struct{}{}
	return s
}

// Publish hands evs to every subscriber. Events are shared: nobody may
// modify them after publishing.
func (b *Broker) Publish(evs []*vigilv1.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		for _, ev := range evs {
			select {
			case s.c <- ev:
			default:
				s.lagged.Store(true)
			}
		}
	}
}

// Close closes every subscription; later subscriptions start closed.
func (b *Broker) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for s := range b.subs {
		close(s.c)
		delete(b.subs, s)
	}
}

// Subscribers returns the number of open subscriptions.
func (b *Broker) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// C delivers the events.
func (s *Subscription) C() <-chan *vigilv1.Event { return s.c }

// TakeLagged reports whether events were dropped since the last call.
func (s *Subscription) TakeLagged() bool { return s.lagged.Swap(false) }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if _, ok := s.b.subs[s]; ok {
		delete(s.b.subs, s)
		close(s.c)
	}
}
