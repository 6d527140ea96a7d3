package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, which /proc/PID/stat counts in: 100 on every
// Linux architecture Vigil runs on.
const clockTicks = 100

// parseStat returns the state, utime+stime and start time (in ticks since
// boot) of a /proc/PID/stat line. The command name may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(line string) (state byte, cpu time.Duration, start uint64, err error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 || i+2 >= len(line) {
		return 0, 0, 0, fmt.Errorf("stat: malformed %q", line)
	}
	f := strings.Fields(line[i+2:])
	// f[0] is field 3 (state); utime is field 14, stime 15, starttime 22.
	if len(f) < 20 {
		return 0, 0, 0, fmt.Errorf("stat: %d fields", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, fmt.Errorf("stat: bad numbers in %q", line)
	}
	return f[0][0], time.Duration(ut+st) * time.Second / clockTicks, start, nil
}

func readStat(pid int) (byte, time.Duration, uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	return parseStat(strings.TrimSpace(string(data)))
}

func procCPU(pid int) (time.Duration, error) {
	_, cpu, _, err := readStat(pid)
	return cpu, err
}

func procStart(pid int) uint64 {
	_, _, start, _ := readStat(pid)
	return start
}

func isZombie(pid int) bool {
	st, _, _, err := readStat(pid)
	return err != nil || st == 'Z' || st == 'X'
}

// statusKB returns a "kB" field of /proc/PID/status (VmHWM, VmRSS).
func statusKB(pid int, field string) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKB(data, field)
}

func parseStatusKB(data []byte, field string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		return strconv.ParseUint(v, 10, 64)
	}
	return 0, fmt.Errorf("status: no %s", field)
}

// procComm returns /proc/PID/comm.
func procComm(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(data))
}

// pidsByComm lists the processes whose comm is name.
func pidsByComm(name string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procComm(pid) == name && !isZombie(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func loadAvg() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memoryGiB() float64 {
	data, _ := os.ReadFile("/proc/meminfo")
	kb, err := parseStatusKB(data, "MemTotal")
	if err != nil {
		return 0
	}
	return float64(kb) / (1 << 20)
}

// systemBusy is the CPU time all CPUs spent on anything but idling and
// waiting for I/O since boot (/proc/stat's first line), in USER_HZ ticks
// converted to a duration.
func systemBusy() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseSystemBusy(string(data))
}

func parseSystemBusy(stat string) (time.Duration, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy uint64
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already counted in user.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}
