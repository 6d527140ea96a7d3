package agent

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// fixUTF8 replaces invalid UTF-8 in every string field of m (nested
// messages and lists included) with U+FFFD and reports whether it changed
// anything. Protobuf strings must be UTF-8: one event carrying raw bytes
// from the kernel (an argv, a path) would otherwise fail to encode, and with
// it the store batch, the JSON line and every follower's stream.
func fixUTF8(m protoreflect.Message) bool {
	type fix struct {
		fd protoreflect.FieldDescriptor
		v  protoreflect.Value
	}
	var (
		fixes   []fix
		changed bool
	)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			// Map keys are left alone; values are fixed.
			mv := v.Map()
			mv.Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
				switch fd.MapValue().Kind() {
				case protoreflect.StringKind:
					if s := e.String(); !utf8.ValidString(s) {
						mv.Set(k, protoreflect.ValueOfString(strings.ToValidUTF8(s, "\uFFFD")))
						changed = true
					}
				case protoreflect.MessageKind, protoreflect.GroupKind:
					changed = fixUTF8(e.Message()) || changed
				}
				return true
			})
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				switch fd.Kind() {
				case protoreflect.StringKind:
					if s := l.Get(i).String(); !utf8.ValidString(s) {
						l.Set(i, protoreflect.ValueOfString(strings.ToValidUTF8(s, "\uFFFD")))
						changed = true
					}
				case protoreflect.MessageKind, protoreflect.GroupKind:
					changed = fixUTF8(l.Get(i).Message()) || changed
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			if s := v.String(); !utf8.ValidString(s) {
				fixes = append(fixes, fix{fd, protoreflect.ValueOfString(strings.ToValidUTF8(s, "\uFFFD"))})
			}
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			changed = fixUTF8(v.Message()) || changed
		}
		return true
	})
	for _, f := range fixes {
		m.Set(f.fd, f.v)
	}
	return changed || len(fixes) > 0
}
