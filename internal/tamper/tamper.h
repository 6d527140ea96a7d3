// SPDX-License-Identifier: GPL-2.0
// Shared between tamper.bpf.c and the Go loader (through BTF: bpf2go
// -type generates the Go twins).
#pragma once

enum tamper_method {
	TM_SIGNAL = 1,
	TM_PTRACE = 2,
	TM_PROC_MEM = 3,
	TM_PIDFD_GETFD = 4,
	TM_PROCESS_VM = 5,
	TM_PROC_WRITE = 6,     // /proc/PID/... of the agent opened for write (oom_score_adj, ...)
	TM_FILE_WRITE = 7,
	TM_FILE_TRUNCATE = 8,
	TM_FILE_UNLINK = 9,
	TM_FILE_RENAME = 10,
	TM_FILE_CHMOD = 11,
	TM_FILE_CHOWN = 12,
	TM_MOUNT = 13,
	TM_CGROUP = 14,        // a control file of the agent's cgroup (kill, freeze, limits)
	TM_CGROUP_MOVE = 15,   // the agent's pid written to a cgroup.procs
	TM_SETSCHEDULER = 16,
	TM_SETNICE = 17,
	TM_SETIOPRIO = 18,
	TM_SETRLIMIT = 19,
	TM_BPF_GET_FD = 20,    // BPF_*_GET_FD_BY_ID of a protected id
	TM_BPF_OBJ_GET = 21,   // BPF_OBJ_GET of a path under the agent's pin directory
	TM_BPF_MAP = 22,       // an fd to a protected map (any way)
	TM_BPF_PROG = 23,      // an fd to a protected program (any way)
	TM_BPF_MAP_WRITE = 24, // map update/delete through an fd already held
	TM_BPF_LINK = 25,      // link detach/update through an fd already held
};

enum tamper_hook {
	TH_TASK_KILL = 1,
	TH_PTRACE_ACCESS = 2,
	TH_FILE_OPEN = 3,
	TH_FILE_PERMISSION = 4,
	TH_PATH_TRUNCATE = 5,
	TH_PATH_UNLINK = 6,
	TH_PATH_RENAME = 7,
	TH_PATH_CHMOD = 8,
	TH_PATH_CHOWN = 9,
	TH_SB_MOUNT = 10,
	TH_MOVE_MOUNT = 11,
	TH_TASK_SETSCHEDULER = 12,
	TH_TASK_SETNICE = 13,
	TH_TASK_SETIOPRIO = 14,
	TH_TASK_SETRLIMIT = 15,
	TH_BPF = 16,
	TH_BPF_MAP = 17,
	TH_BPF_PROG = 18,
	TH_PATH_RMDIR = 19,
};

// What a protected inode is.
enum prot_kind {
	PROT_FILE = 1, // the file itself: no write, truncate, unlink, rename, chmod, chown, mount over
	PROT_DIR = 2,  // a directory: itself and every entry directly in it
};

// Kinds of protected BPF object ids.
enum obj_type {
	OBJ_PROG = 1,
	OBJ_MAP = 2,
	OBJ_LINK = 3,
};

// The agent's cgroups (by cgroup id = inode number of the cgroup dir).
enum cg_kind {
	CG_OWN = 1,      // the agent's own cgroup: no write to any control file
	CG_ANCESTOR = 2, // an ancestor: no cgroup.kill, no cgroup.freeze
};

struct file_key {
	__u64 dev; // kernel encoding (MAJOR << 20 | MINOR), as sb->s_dev
	__u64 ino;
};

struct obj_key {
	__u32 type; // enum obj_type
	__u32 id;
};

struct tamper_cfg {
	__u32 agent_tgid;  // the protected thread group; 0: none
	__u32 enforce;     // 1: refuse; 0: report only
	__u64 agent_start; // its start (group leader's start_boottime): a reused pid is not the agent
	__u64 bin_dev;     // the agent's executable (kernel dev encoding) ...
	__u64 bin_ino;     // ... and inode
	__u32 orphaned;    // 1: the agent died; a process running bin may adopt the pinned objects
	__u32 pad;
};

#define TNAME_MAX 64

struct tamper_event {
	__u64 ktime;      // CLOCK_BOOTTIME ns
	__u64 start_time; // the actor's start (boot ns)
	__u64 cgroup_id;
	__u64 target_id;  // inode, object id, cgroup id
	__u64 target_dev;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 method; // enum tamper_method
	__u32 hook;   // enum tamper_hook
	__u32 detail; // signal, bpf command, f_mode, ...
	__u32 target_pid;
	__u32 refused;
	__u32 pad;
	char comm[16];
	char name[TNAME_MAX]; // file name or pin path
};
