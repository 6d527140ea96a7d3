package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Report is everything one `make bench` run measured. It is written as
// report.json as is, and rendered as report.md and chart.svg.
type Report struct {
	Title    string    `json:"title"`
	Mode     string    `json:"mode"` // "full" or "quick"
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Seconds  float64   `json:"seconds"`
	Machine  Machine   `json:"machine"`

	// Configs lists every configuration of the table, run or not, per
	// place, with the reason when it did not run.
	Configs []ConfigStatus `json:"configs"`

	Micro      []MicroSuite `json:"micro"`
	Throughput *Throughput  `json:"throughput,omitempty"`
	Cost       []Cost       `json:"cost"`
	Decision   []Decision   `json:"decision_latency"`
	Auth       *Auth        `json:"auth_latency,omitempty"`
	Fleet      *Fleet       `json:"fleet,omitempty"`
	Workload   *Workload    `json:"workload,omitempty"`
	Targets    []Target     `json:"targets"`

	// Findings are observations worth a reader's attention (a control
	// ratio off 1.0, loss, a busy machine), derived from the numbers.
	Findings []string `json:"findings"`
	// Errors are phases that failed; the report still shows the rest.
	Errors []string `json:"errors"`
}

// Machine describes where the host part ran.
type Machine struct {
	Kernel    string  `json:"kernel"`
	CPU       string  `json:"cpu"`
	Cores     int     `json:"cores"`
	MemoryGiB float64 `json:"memory_gib"`
	// LoadStart and LoadEnd are the 1-minute load averages when the run
	// started and ended: other work on the machine shows up here.
	LoadStart float64 `json:"load_start"`
	LoadEnd   float64 `json:"load_end"`
	// CPUAccounting says how daemon CPU was measured (cgroup v2
	// cpu.stat, cgroup v1 cpuacct, or /proc/PID/stat).
	CPUAccounting string   `json:"cpu_accounting"`
	Notes         []string `json:"notes,omitempty"`
}

// ConfigStatus says whether a configuration ran at a place, and why not.
type ConfigStatus struct {
	Name   string   `json:"name"`
	Label  string   `json:"label"`
	Place  string   `json:"place"` // "host", "vm 6.12", ...
	Ran    bool     `json:"ran"`
	Reason string   `json:"reason,omitempty"`
	Notes  []string `json:"notes,omitempty"`
}

// MicroSuite is the microbenchmarks at one place, all configurations
// interleaved in one run.
type MicroSuite struct {
	Place    string `json:"place"`
	Kernel   string `json:"kernel"`
	Baseline string `json:"baseline"`
	Rounds   int    `json:"rounds"`
	// Configs are the configurations that ran, in column order.
	Configs []string   `json:"configs"`
	Ops     []OpResult `json:"ops"`
	Note    string     `json:"note,omitempty"`
	// Absolute says whether the absolute times mean anything (false in
	// an emulated VM, where only ratios do).
	Absolute bool `json:"absolute"`
	// CPUs is how many CPUs the machine it ran on had (0: not recorded).
	// On one CPU the wall clock of an operation also holds whatever the
	// agent does meanwhile, its recording of that very operation included.
	CPUs int `json:"cpus,omitempty"`
	// BPF is the in-kernel time of the operations also reported by CPU
	// time: what the loaded BPF programs ran per operation, by the
	// kernel's statistics. BPFNote says why it is missing, if it is.
	BPF     []BPFTime `json:"bpf,omitempty"`
	BPFNote string    `json:"bpf_note,omitempty"`
}

// BPFTime is the run time of every loaded BPF program during an operation,
// per operation, under one configuration, all rounds summed.
type BPFTime struct {
	Op     string `json:"op"`
	Config string `json:"config"`
	Ops    int64  `json:"ops"`
	// NSPerOp is the programs' run time per operation; RunsPerOp the
	// program runs per operation.
	NSPerOp   float64 `json:"ns_per_op"`
	RunsPerOp float64 `json:"runs_per_op"`
	// Programs is the run time per operation by program name (programs
	// of the same name added up).
	Programs map[string]float64 `json:"programs_ns_per_op,omitempty"`
	// Share is NSPerOp less the baseline's, over the baseline's median
	// wall-clock time of the operation: the fraction of an operation the
	// configuration's programs add to its path.
	Share float64 `json:"share"`
}

// BPFOf returns the in-kernel time of op under config, or nil.
func (s *MicroSuite) BPFOf(op, config string) *BPFTime {
	for i := range s.BPF {
		if s.BPF[i].Op == op && s.BPF[i].Config == config {
			return &s.BPF[i]
		}
	}
	return nil
}

// OpResult is one operation measured under each configuration.
type OpResult struct {
	Op       string `json:"op"`
	Label    string `json:"label"`
	PerBatch int    `json:"per_batch"`
	// Control marks an operation no configuration should slow down.
	Control bool           `json:"control,omitempty"`
	Results []ConfigResult `json:"results"`
}

// Result returns the result of configuration name, or nil.
func (o *OpResult) Result(name string) *ConfigResult {
	for i := range o.Results {
		if o.Results[i].Config == name {
			return &o.Results[i]
		}
	}
	return nil
}

// ConfigResult is one operation under one configuration: nanoseconds per
// operation, one sample per batch, all rounds pooled.
type ConfigResult struct {
	Config string  `json:"config"`
	NS     Summary `json:"ns_per_op"`
	// Ratio is NS.Median over the baseline's NS.Median in the same run.
	Ratio float64 `json:"ratio"`
	// MeanRatio is NS.Mean over the baseline's NS.Mean.
	MeanRatio float64 `json:"mean_ratio,omitempty"`
	// RoundRatios are the ratios of each round's medians: their spread
	// tells how stable the ratio is.
	RoundRatios  []float64 `json:"round_ratios,omitempty"`
	RoundMedians []float64 `json:"round_medians"`
	// RatioInterval is the 90% bootstrap interval of Ratio over rounds
	// ([low, high]); absent with fewer than three rounds.
	RatioInterval []float64 `json:"ratio_interval_90,omitempty"`
}

// FormatInterval renders a ratio interval as overheads: "−1.2…+7.4%"; ""
// when there is none.
func FormatInterval(iv []float64) string {
	if len(iv) != 2 {
		return ""
	}
	return fmt.Sprintf("%+.1f…%+.1f%%", (iv[0]-1)*100, (iv[1]-1)*100)
}

// Throughput is the ramp of the agent's load until it loses events.
type Throughput struct {
	Config      string    `json:"config"`
	StepSeconds float64   `json:"step_seconds"`
	Ramps       []Ramp    `json:"ramps"`
	Note        string    `json:"note,omitempty"`
	Gaps        *GapCheck `json:"gaps,omitempty"`
}

// GapCheck compares the loss counter with the gap records in the store.
type GapCheck struct {
	Records   int    `json:"records"`
	LostInGap uint64 `json:"lost_in_gaps"`
	Counter   uint64 `json:"events_lost_counter"`
	Note      string `json:"note,omitempty"`
}

// Ramp is one load generator driven at rising rates.
type Ramp struct {
	Name  string     `json:"name"` // "exec", "events"
	Label string     `json:"label"`
	Unit  string     `json:"unit"` // "execs/s", "events/s"
	Steps []RampStep `json:"steps"`
	// MaxZeroLoss is the highest achieved rate of a step with no loss,
	// below the first step that lost events.
	MaxZeroLoss float64 `json:"max_zero_loss"`
	// MachineMax is the rate of the unpaced step: as fast as the machine
	// goes with the agent running.
	MachineMax float64 `json:"machine_max"`
	// LossFree says no step lost anything, up to MachineMax.
	LossFree bool `json:"loss_free"`
}

// RampStep is one rate of a ramp.
type RampStep struct {
	Target   float64 `json:"target"` // 0: unpaced
	Achieved float64 `json:"achieved"`
	Ops      int64   `json:"ops"`
	Events   uint64  `json:"events_received"`
	Lost     uint64  `json:"events_lost"`
	// AgentCPU is the agent's CPU during the step, in % of one core.
	AgentCPU float64 `json:"agent_cpu_pct"`
	// DrainSeconds is how long after the load stopped the agent still
	// received events (its backlog).
	DrainSeconds float64 `json:"drain_seconds"`
}

// Cost is what a daemon costs itself: CPU and memory.
type Cost struct {
	Config string `json:"config"`
	Label  string `json:"label"`
	// PacedRate and PacedCPU: CPU in % of one core while execs ran at
	// about PacedRate per second.
	PacedRate float64 `json:"paced_execs_per_s"`
	PacedCPU  float64 `json:"paced_cpu_pct"`
	// MicroRate and MicroCPU: the same during the exec microbenchmark
	// (as fast as the machine goes).
	MicroRate float64 `json:"micro_execs_per_s"`
	MicroCPU  float64 `json:"micro_cpu_pct"`
	// PeakRSSMiB is the largest VmHWM seen over all of the run's starts
	// of this configuration; PeakWhere says in which phase.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	PeakWhere  string  `json:"peak_where,omitempty"`
	Processes  string  `json:"processes,omitempty"`
	Note       string  `json:"note,omitempty"`
}

// Decision is a row of the decision-latency table: the first exec of a
// file nobody has seen, of one size, at one place, under one
// configuration, against the same exec with no agent.
type Decision struct {
	File   string `json:"file"`
	Size   int64  `json:"size_bytes,omitempty"`
	Place  string `json:"place,omitempty"`
	Config string `json:"config,omitempty"`
	Status string `json:"status"`
	// P50 and P99 are the time of execve under Config until it failed
	// (refused), in milliseconds, over the refused samples.
	P50 *float64 `json:"p50_ms,omitempty"`
	P99 *float64 `json:"p99_ms,omitempty"`
	// Samples execs were tried under Config; Refused of them failed with
	// EPERM (lockdown refuses an unknown file).
	Samples int `json:"samples,omitempty"`
	Refused int `json:"refused,omitempty"`
	// BaselineP50 and BaselineP99: the same exec with no agent, until the
	// new image ran its first instruction, over BaselineSamples.
	BaselineP50     *float64 `json:"baseline_p50_ms,omitempty"`
	BaselineP99     *float64 `json:"baseline_p99_ms,omitempty"`
	BaselineSamples int      `json:"baseline_samples,omitempty"`
}

// Workload is a real build with and without the agent.
type Workload struct {
	Project  string           `json:"project"`
	Command  string           `json:"command"`
	Rounds   int              `json:"rounds"`
	Runs     []WorkloadRun    `json:"runs"`
	Results  []WorkloadResult `json:"results"`
	Baseline string           `json:"baseline"`
	Note     string           `json:"note,omitempty"`
}

// WorkloadRun is one build.
type WorkloadRun struct {
	Config   string  `json:"config"`
	Round    int     `json:"round"`
	Seconds  float64 `json:"seconds"`
	AgentCPU float64 `json:"agent_cpu_pct,omitempty"`
	Events   uint64  `json:"events_received,omitempty"`
	Lost     uint64  `json:"events_lost,omitempty"`
	Execs    uint64  `json:"execs,omitempty"`
}

// WorkloadResult sums up the builds of one configuration.
type WorkloadResult struct {
	Config  string  `json:"config"`
	Seconds Summary `json:"seconds"`
	Ratio   float64 `json:"ratio"`
	// MinRatio compares the fastest builds: the least disturbed by other
	// work on the machine when there are few rounds.
	MinRatio float64 `json:"min_ratio"`
}

// Verdicts of a Target.
const (
	Met         = "met"
	NotMet      = "not met"
	NotYet      = "not measurable yet"
	NotMeasured = "not measured"
	// Reported is a goal that asks for a number, not a bound.
	Reported = "reported"
)

// Target is one of the goals, reported against, not asserted.
type Target struct {
	What     string `json:"what"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Verdict  string `json:"verdict"`
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Auth is the filter API's round trip (issue 7): one approved client
// answering the exec authorization of every exec driven at Rate per
// second, its latency as the agent recorded it in each decision.
type Auth struct {
	Place    string  `json:"place"`
	Rate     int     `json:"rate"`     // execs per second asked for
	Achieved float64 `json:"achieved"` // execs per second driven
	Seconds  float64 `json:"seconds"`
	Execs    int64   `json:"execs"`
	Samples  int     `json:"samples"` // decisions with the client's answer
	Missed   int     `json:"missed"`  // deadlines missed (not timed)
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	MaxUs    float64 `json:"max_us"`
	// Floors: a byte back and forth between two processes at the same
	// rate, no agent (the machine's wakeup cost; see harness/pingpong.go),
	// on the idle machine and while the same exec load runs.
	FloorIdle   *Latency `json:"floor_idle,omitempty"`
	FloorLoaded *Latency `json:"floor_loaded,omitempty"`
	Reason      string   `json:"reason,omitempty"` // why it did not run
	// Realtime is the same round trip with the agent (--realtime) and
	// the client (-realtime) at SCHED_RR 1 (internal/sched).
	Realtime *AuthRun `json:"realtime,omitempty"`
}

// AuthRun is one run of the AUTH round trip.
type AuthRun struct {
	Achieved float64 `json:"achieved"`
	Execs    int64   `json:"execs"`
	Samples  int     `json:"samples"`
	Missed   int     `json:"missed"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	MaxUs    float64 `json:"max_us"`
	Reason   string  `json:"reason,omitempty"` // why it did not run
}

// Latency is a sample's size and percentiles, µs.
type Latency struct {
	Samples int     `json:"samples"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	MaxUs   float64 `json:"max_us"`
	Error   string  `json:"error,omitempty"` // why it was not measured
}

// NewLatency summarizes lat (µs).
func NewLatency(lat []float64) *Latency {
	return &Latency{Samples: len(lat), P50us: Percentile(lat, 50), P99us: Percentile(lat, 99), MaxUs: Percentile(lat, 100)}
}

// Fleet is the fleet server's load benchmark (issue 9): simulated agents
// on loopback enroll and upload events against `vigil server`.
type Fleet struct {
	Runs   []FleetRun `json:"runs"`
	Reason string     `json:"reason,omitempty"` // why it did not run
}

// FleetRun is one deployment at one load, on a fresh server.
type FleetRun struct {
	Deployment    string  `json:"deployment"` // "embedded", "embedded+stream", ...
	Hosts         int     `json:"hosts"`
	EventsPerHost int     `json:"events_per_host_per_sec"`
	Seconds       float64 `json:"seconds"`
	Enrolled      int     `json:"enrolled"`
	EnrollPerSec  float64 `json:"enroll_per_sec"`
	GoalPerSec    float64 `json:"goal_events_per_sec"`
	AckedPerSec   float64 `json:"acked_events_per_sec"`
	EventsSent    uint64  `json:"events_sent"`
	EventsAcked   uint64  `json:"events_acked"`
	Unsent        uint64  `json:"unsent"` // made, not acknowledged by the end (would be sent later)
	UploadErrors  uint64  `json:"upload_errors"`
	UploadP50ms   float64 `json:"upload_p50_ms"`
	UploadP99ms   float64 `json:"upload_p99_ms"`
	Stored        uint64  `json:"stored"`
	Lost          int64   `json:"lost"`    // acknowledged, never stored (the stored count stopped growing)
	Pending       int64   `json:"pending"` // acknowledged, still being stored when the drain's time was up
	StoredPerSec  float64 `json:"stored_per_sec"`
	ServerLost    uint64  `json:"server_lost"` // events_lost the server counted
	DrainSeconds  float64 `json:"drain_seconds"`
	WatchStreams  int     `json:"watch_streams"`
	ServerCPU     float64 `json:"server_cpu_pct"` // % of one core over the upload phase
	ServerHWMMiB  float64 `json:"server_hwm_mib"`
	Error         string  `json:"error,omitempty"`
}

// Sustained reports whether the run kept up with its load without loss:
// everything acknowledged stored, no upload failed, at least 95% of the
// goal rate acknowledged, and all of it stored within FleetDrainGrace of
// the load's end (a store that falls behind builds a backlog: not
// sustained, though nothing is lost yet).
func (r FleetRun) Sustained() bool {
	return r.Error == "" && r.Lost == 0 && r.Pending == 0 && r.ServerLost == 0 && r.UploadErrors == 0 &&
		r.AckedPerSec >= 0.95*r.GoalPerSec && r.DrainSeconds <= FleetDrainGrace
}

// FleetDrainGrace is how long after the load a sustained run may take to
// store what it acknowledged.
const FleetDrainGrace = 5.0
