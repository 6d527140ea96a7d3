package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// parseDuration is time.ParseDuration that also takes whole days ("7d",
// "1d12h").
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		d := time.Duration(n) * 24 * time.Hour
		if rest == "" {
			return d, nil
		}
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return d + r, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (e.g. 90s, 15m, 12h, 7d)", s)
	}
	return d, nil
}

// formatDuration prints d in days when it is whole days.
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}

// durationValue is a pflag.Value for durations that take days.
type durationValue time.Duration

func durationFlag(d time.Duration) *durationValue {
	v := durationValue(d)
	return &v
}

func (v *durationValue) get() time.Duration { return time.Duration(*v) }
func (v *durationValue) String() string     { return formatDuration(time.Duration(*v)) }
func (v *durationValue) Type() string       { return "duration" }

func (v *durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*v = durationValue(d)
	return nil
}

// parseSince takes a time as a duration back from now ("10m", "2d"), an
// RFC 3339 time, or a local date/time ("2006-01-02", "2006-01-02 15:04").
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := parseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration back from now (10m, 2h, 1d), an RFC 3339 time or a local date/time (2006-01-02 15:04)", s)
}
