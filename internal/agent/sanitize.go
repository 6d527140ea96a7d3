package agent

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// fixEventUTF8 replaces invalid UTF-8 in every string field of ev with
// U+FFFD and reports whether it changed anything: fixUTF8's result, by
// typed field access instead of a protoreflect walk (which cost a few µs
// and a dozen allocations an event). An event detail it does not know
// goes through fixUTF8. TestFixEventUTF8CoversEveryString fails when the
// schema gains a string this misses.
func fixEventUTF8(ev *vigilv1.Event) bool {
	var f utf8Fixer
	f.str(&ev.Kind)
	f.str(&ev.Backend)
	f.str(&ev.Hook)
	if p := ev.Process; p != nil {
		f.str(&p.Comm)
		f.str(&p.Exe)
		for _, a := range p.Ancestry {
			if a != nil {
				f.str(&a.Exe)
			}
		}
	}
	switch d := ev.Detail.(type) {
	case nil, *vigilv1.Event_Fork, *vigilv1.Event_Exit, *vigilv1.Event_Gap:
	case *vigilv1.Event_Exec:
		if x := d.Exec; x != nil {
			f.file(x.File)
			f.str(&x.Filename)
			for i := range x.Argv {
				f.str(&x.Argv[i])
			}
			f.str(&x.Cwd)
			f.str(&x.CallerExe)
		}
	case *vigilv1.Event_ImageLoad:
		if x := d.ImageLoad; x != nil {
			f.file(x.File)
		}
	case *vigilv1.Event_MemExec:
		if x := d.MemExec; x != nil {
			f.str(&x.Syscall)
			f.file(x.File)
		}
	case *vigilv1.Event_Inject:
		if x := d.Inject; x != nil {
			f.str(&x.Method)
			f.str(&x.TargetExe)
		}
	case *vigilv1.Event_Kernel:
		if x := d.Kernel; x != nil {
			f.str(&x.Op)
			f.file(x.File)
			f.str(&x.Detail)
			f.str(&x.BpfProgName)
		}
	case *vigilv1.Event_FileModify:
		if x := d.FileModify; x != nil {
			f.str(&x.Op)
			f.file(x.File)
			f.str(&x.NewPath)
		}
	case *vigilv1.Event_Integrity:
		if x := d.Integrity; x != nil {
			for _, s := range []*string{&x.Check, &x.Subject, &x.Expected, &x.Actual, &x.Detail, &x.Trigger} {
				f.str(s)
			}
		}
	case *vigilv1.Event_Tamper:
		if x := d.Tamper; x != nil {
			f.str(&x.Method)
			f.str(&x.Target)
			f.str(&x.Detail)
		}
	default:
		return fixUTF8(ev.ProtoReflect()) || f.changed
	}
	if v := ev.Verdict; v != nil {
		for _, s := range []*string{&v.Action, &v.Rule, &v.Mode, &v.DecidedBy, &v.Policy} {
			f.str(s)
		}
		for _, c := range v.Clients {
			if c != nil {
				for _, s := range []*string{&c.Client, &c.Answer, &c.Applied, &c.Reason} {
					f.str(s)
				}
			}
		}
	}
	if t := ev.Trust; t != nil {
		for _, s := range []*string{&t.Sha256, &t.Verdict, &t.Source, &t.Mode} {
			f.str(s)
		}
		for i := range t.CatalogSigners {
			f.str(&t.CatalogSigners[i])
		}
	}
	return f.changed
}

// utf8Fixer makes strings valid UTF-8 and remembers whether it had to.
type utf8Fixer struct{ changed bool }

func (f *utf8Fixer) str(s *string) {
	if !utf8.ValidString(*s) {
		*s = strings.ToValidUTF8(*s, "\uFFFD")
		f.changed = true
	}
}

func (f *utf8Fixer) file(x *vigilv1.File) {
	if x != nil {
		f.str(&x.Path)
	}
}

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
