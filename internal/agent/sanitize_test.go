package agent

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// fillStrings sets every string field reachable from m (lists get two
// elements, messages are made; of a oneof only the member named) to
// invalid UTF-8, and returns how many strings it set.
func fillStrings(m protoreflect.Message, oneof protoreflect.Name) int {
	n := 0
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.ContainingOneof() != nil && fd.Name() != oneof {
			continue
		}
		bad := protoreflect.ValueOfString("bad\xff" + string(fd.Name()))
		switch {
		case fd.IsMap():
			// Event has no maps; fixUTF8 handles them if it gets one.
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := m.Mutable(fd).List()
			l.Append(bad)
			l.Append(protoreflect.ValueOfString("ok"))
			n++
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := m.Mutable(fd).List()
			for range 2 {
				e := l.NewElement()
				n += fillStrings(e.Message(), "")
				l.Append(e)
			}
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, bad)
			n++
		case fd.Kind() == protoreflect.MessageKind:
			n += fillStrings(m.Mutable(fd).Message(), "")
		}
	}
	return n
}

// TestFixEventUTF8CoversEveryString: for every event detail, an event
// whose every string is invalid comes out of fixEventUTF8 exactly as out
// of the reflective fixUTF8. A string field added to the schema and not
// to fixEventUTF8 fails here.
func TestFixEventUTF8CoversEveryString(t *testing.T) {
	oneof := (&vigilv1.Event{}).ProtoReflect().Descriptor().Oneofs().ByName("detail")
	for i := range oneof.Fields().Len() {
		name := oneof.Fields().Get(i).Name()
		fast, slow := &vigilv1.Event{}, &vigilv1.Event{}
		if n := fillStrings(fast.ProtoReflect(), name); n == 0 {
			t.Fatalf("%s: no strings set", name)
		}
		fillStrings(slow.ProtoReflect(), name)
		if !fixEventUTF8(fast) {
			t.Errorf("%s: fixEventUTF8 reported no change", name)
		}
		if !fixUTF8(slow.ProtoReflect()) {
			t.Errorf("%s: fixUTF8 reported no change", name)
		}
		if !proto.Equal(fast, slow) {
			t.Errorf("%s: fixEventUTF8 and fixUTF8 differ:\n fast %v\n slow %v", name, fast, slow)
		}
		if _, err := proto.Marshal(fast); err != nil {
			t.Errorf("%s: still not encodable: %v", name, err)
		}
		if fixEventUTF8(fast) {
			t.Errorf("%s: a fixed event changed again", name)
		}
	}
	// A valid event is left alone and reported unchanged.
	ev := benchEvents(2)[1]
	want := proto.Clone(ev)
	if fixEventUTF8(ev) || !proto.Equal(ev, want) {
		t.Errorf("valid event changed: %v", ev)
	}
}

func BenchmarkFixUTF8(b *testing.B) {
	evs := benchEvents(4)
	b.Run("reflect", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, ev := range evs {
				fixUTF8(ev.ProtoReflect())
			}
		}
	})
	b.Run("typed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, ev := range evs {
				fixEventUTF8(ev)
			}
		}
	})
}
