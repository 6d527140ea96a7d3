//go:build ignore

// SPDX-License-Identifier: GPL-2.0
// Vigil tamper protection: LSM programs that refuse, to every process but
// the agent itself, what would stop, blind or change the agent: signals,
// ptrace and its relatives, the agent's /proc files, its files and
// directories, its cgroup, its scheduling and limits, and its BPF objects.
// The agent fills the maps (who it is, which inodes, which object ids,
// which cgroups); every refusal is one record in tamper_events.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "tamper.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define FMODE_WRITE 0x2
#define MAY_WRITE 0x2
#define PTRACE_MODE_ATTACH 0x02
#define PROC_SUPER_MAGIC 0x9fa0
#define CGROUP2_SUPER_MAGIC 0x63677270

#define NR_WRITE 1
#define NR_PWRITE64 18
#define NR_PTRACE 101
#define NR_PROCESS_VM_READV 310
#define NR_PROCESS_VM_WRITEV 311
#define NR_PIDFD_GETFD 438

// Make the enums and the event reach BTF for bpf2go -type.
const enum tamper_method *unused_method __attribute__((unused));
const enum tamper_hook *unused_hook __attribute__((unused));
const enum prot_kind *unused_prot __attribute__((unused));
const enum obj_type *unused_obj __attribute__((unused));
const enum cg_kind *unused_cg __attribute__((unused));
const struct tamper_event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tamper_cfg);
} tamper_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct file_key);
	__type(value, __u32); // enum prot_kind
} tamper_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct obj_key);
	__type(value, __u32);
} tamper_objs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);   // cgroup id (inode number of the cgroup directory)
	__type(value, __u32); // enum cg_kind
} tamper_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} tamper_events SEC(".maps");

// Records the ring buffer could not take.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tamper_lost SEC(".maps");

struct pt_regs___x86 {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

static __always_inline struct tamper_cfg *tcfg(void)
{
	__u32 zero = 0;
	struct tamper_cfg *c = bpf_map_lookup_elem(&tamper_config, &zero);
	if (!c || !c->agent_tgid)
		return NULL;
	return c;
}

// runs_bin: t's executable is the agent's binary.
static __always_inline int runs_bin(struct tamper_cfg *c, struct task_struct *t)
{
	struct inode *inode = BPF_CORE_READ(t, mm, exe_file, f_inode);
	if (!inode)
		return 0;
	return BPF_CORE_READ(inode, i_ino) == c->bin_ino && BPF_CORE_READ(inode, i_sb, s_dev) == c->bin_dev;
}

// is_agent_task: t belongs to the agent. While the agent is alive that is
// its thread group (tgid and start time, so a recycled pid does not
// qualify); once it died (orphaned), any process running the agent's
// binary: a restarted agent adopts the pinned objects, and no one may
// trace or signal a process that could.
static __always_inline int is_agent_task(struct tamper_cfg *c, struct task_struct *t)
{
	if (!t)
		return 0;
	if (c->orphaned)
		return c->bin_ino && runs_bin(c, t);
	if (BPF_CORE_READ(t, tgid) != c->agent_tgid)
		return 0;
	__u64 start = BPF_CORE_READ(t, group_leader, start_boottime);
	// The loader cannot read the exact start time; the first task of
	// the agent's thread group seen here (the agent opens files as soon
	// as the maps are filled) records it.
	if (!c->agent_start)
		c->agent_start = start;
	return start == c->agent_start;
}

static __always_inline int is_agent(struct tamper_cfg *c)
{
	if (!c->orphaned && (bpf_get_current_pid_tgid() >> 32) != c->agent_tgid)
		return 0;
	return is_agent_task(c, bpf_get_current_task_btf());
}

static __always_inline __u64 syscall_nr(void)
{
	struct pt_regs___x86 *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	return BPF_CORE_READ(regs, orig_ax);
}

// refuse reports the attempt and says what the hook returns.
static __always_inline int refuse(struct tamper_cfg *c, __u32 method, __u32 hook, __u32 detail, __u32 target_pid,
				  __u64 target_id, __u64 target_dev, const char *kname)
{
	struct tamper_event *e = bpf_ringbuf_reserve(&tamper_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&tamper_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return c->enforce ? -EPERM : 0;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ktime = bpf_ktime_get_boot_ns();
	e->start_time = BPF_CORE_READ(task, group_leader, start_boottime);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->target_id = target_id;
	e->target_dev = target_dev;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = BPF_CORE_READ(task, cred, uid.val);
	e->method = method;
	e->hook = hook;
	e->detail = detail;
	e->target_pid = target_pid;
	e->refused = c->enforce ? 1 : 0;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->name[0] = 0;
	if (kname)
		bpf_probe_read_kernel_str(e->name, sizeof(e->name), kname);
	bpf_ringbuf_submit(e, 0);
	return c->enforce ? -EPERM : 0;
}

// ------------------------------------------------------------- the process

SEC("lsm/task_kill")
int BPF_PROG(tamper_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)
{
	struct tamper_cfg *c = tcfg();
	if (!c || sig == 0 || !is_agent_task(c, p) || is_agent(c))
		return 0;
	return refuse(c, TM_SIGNAL, TH_TASK_KILL, sig, BPF_CORE_READ(p, tgid), 0, 0, NULL);
}

// ptrace_access_check decides ptrace attach, pidfd_getfd,
// process_vm_readv/writev and /proc/PID/mem (PTRACE_MODE_ATTACH). Reads
// of /proc/PID/stat and the like (PTRACE_MODE_READ) stay allowed.
SEC("lsm/ptrace_access_check")
int BPF_PROG(tamper_ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	struct tamper_cfg *c = tcfg();
	if (!c || !(mode & PTRACE_MODE_ATTACH) || !is_agent_task(c, child) || is_agent(c))
		return 0;
	__u64 nr = syscall_nr();
	__u32 m = TM_PTRACE;
	if (nr == NR_PIDFD_GETFD)
		m = TM_PIDFD_GETFD;
	else if (nr == NR_PROCESS_VM_READV || nr == NR_PROCESS_VM_WRITEV)
		m = TM_PROCESS_VM;
	else if (nr != NR_PTRACE)
		m = TM_PROC_MEM;
	return refuse(c, m, TH_PTRACE_ACCESS, (__u32)nr, BPF_CORE_READ(child, tgid), 0, 0, NULL);
}

SEC("lsm/task_setscheduler")
int BPF_PROG(tamper_task_setscheduler, struct task_struct *p)
{
	struct tamper_cfg *c = tcfg();
	if (!c || !is_agent_task(c, p) || is_agent(c))
		return 0;
	return refuse(c, TM_SETSCHEDULER, TH_TASK_SETSCHEDULER, 0, BPF_CORE_READ(p, tgid), 0, 0, NULL);
}

SEC("lsm/task_setnice")
int BPF_PROG(tamper_task_setnice, struct task_struct *p, int nice)
{
	struct tamper_cfg *c = tcfg();
	if (!c || !is_agent_task(c, p) || is_agent(c))
		return 0;
	return refuse(c, TM_SETNICE, TH_TASK_SETNICE, (__u32)nice, BPF_CORE_READ(p, tgid), 0, 0, NULL);
}

SEC("lsm/task_setioprio")
int BPF_PROG(tamper_task_setioprio, struct task_struct *p, int ioprio)
{
	struct tamper_cfg *c = tcfg();
	if (!c || !is_agent_task(c, p) || is_agent(c))
		return 0;
	return refuse(c, TM_SETIOPRIO, TH_TASK_SETIOPRIO, (__u32)ioprio, BPF_CORE_READ(p, tgid), 0, 0, NULL);
}

// task_setrlimit is asked by prlimit(2) for the target task.
SEC("lsm/task_setrlimit")
int BPF_PROG(tamper_task_setrlimit, struct task_struct *p, unsigned int resource, struct rlimit *new_rlim)
{
	struct tamper_cfg *c = tcfg();
	if (!c || !is_agent_task(c, p) || is_agent(c))
		return 0;
	return refuse(c, TM_SETRLIMIT, TH_TASK_SETRLIMIT, resource, BPF_CORE_READ(p, tgid), 0, 0, NULL);
}

// ------------------------------------------------------------------ files

static __always_inline __u32 inode_prot(struct inode *inode)
{
	if (!inode)
		return 0;
	struct file_key k = {
		.dev = BPF_CORE_READ(inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(inode, i_ino),
	};
	__u32 *v = bpf_map_lookup_elem(&tamper_files, &k);
	return v ? *v : 0;
}

// dentry_protected: the dentry is a protected file or directory, or an
// entry (existing or to be) of a protected directory.
static __always_inline int dentry_protected(struct dentry *d)
{
	if (!d)
		return 0;
	if (inode_prot(BPF_CORE_READ(d, d_inode)))
		return 1;
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	return parent && parent != d && inode_prot(BPF_CORE_READ(parent, d_inode)) == PROT_DIR;
}

static __always_inline int refuse_dentry(struct tamper_cfg *c, __u32 method, __u32 hook, __u32 detail,
					 struct dentry *d)
{
	struct inode *inode = BPF_CORE_READ(d, d_inode);
	__u64 ino = 0, dev = 0;
	if (inode) {
		ino = BPF_CORE_READ(inode, i_ino);
		dev = BPF_CORE_READ(inode, i_sb, s_dev);
	}
	return refuse(c, method, hook, detail, 0, ino, dev, (const char *)BPF_CORE_READ(d, d_name.name));
}

static __always_inline int path_check(__u32 method, __u32 hook, const struct path *path)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	struct dentry *d = BPF_CORE_READ(path, dentry);
	if (!dentry_protected(d))
		return 0;
	return refuse_dentry(c, method, hook, 0, d);
}

// proc_task returns the task a /proc/PID/... inode belongs to, or NULL.
static __always_inline struct task_struct *proc_task(struct inode *inode)
{
	struct proc_inode *pi = container_of(inode, struct proc_inode, vfs_inode);
	struct pid *pid = BPF_CORE_READ(pi, pid);
	if (!pid)
		return NULL;
	struct hlist_node *first = BPF_CORE_READ(pid, tasks[PIDTYPE_PID].first);
	if (!first)
		return NULL;
	return container_of(first, struct task_struct, pid_links[PIDTYPE_PID]);
}

static __always_inline int is_name(const char *have, const char *want, int n)
{
	for (int i = 0; i < n; i++)
		if (have[i] != want[i])
			return 0;
	return 1;
}

// cgroup_check decides a write to a cgroup control file: any file of the
// agent's own cgroup, cgroup.kill and cgroup.freeze of its ancestors.
static __always_inline int cgroup_check(struct tamper_cfg *c, struct file *file, __u32 hook)
{
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	struct dentry *dir = BPF_CORE_READ(d, d_parent);
	__u64 cgid = BPF_CORE_READ(dir, d_inode, i_ino);
	__u32 *kind = bpf_map_lookup_elem(&tamper_cgroups, &cgid);
	if (!kind)
		return 0;
	const char *kname = (const char *)BPF_CORE_READ(d, d_name.name);
	if (*kind != CG_OWN) {
		char name[16] = {};
		bpf_probe_read_kernel_str(name, sizeof(name), kname);
		if (!is_name(name, "cgroup.kill", 12) && !is_name(name, "cgroup.freeze", 14))
			return 0;
	}
	return refuse(c, TM_CGROUP, hook, *kind, c->agent_tgid, cgid, 0, kname);
}

SEC("lsm/file_open")
int BPF_PROG(tamper_file_open, struct file *file)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	__u32 fmode = BPF_CORE_READ(file, f_mode);
	__u64 magic = BPF_CORE_READ(inode, i_sb, s_magic);
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	const char *kname = (const char *)BPF_CORE_READ(d, d_name.name);

	if (magic == PROC_SUPER_MAGIC) {
		struct task_struct *t = proc_task(inode);
		if (!is_agent_task(c, t))
			return 0;
		char name[8] = {};
		bpf_probe_read_kernel_str(name, sizeof(name), kname);
		if (is_name(name, "mem", 4))
			return refuse(c, TM_PROC_MEM, TH_FILE_OPEN, fmode, BPF_CORE_READ(t, tgid), 0, 0, kname);
		if (fmode & FMODE_WRITE)
			return refuse(c, TM_PROC_WRITE, TH_FILE_OPEN, fmode, BPF_CORE_READ(t, tgid), 0, 0, kname);
		return 0;
	}
	if (!(fmode & FMODE_WRITE))
		return 0;
	if (magic == CGROUP2_SUPER_MAGIC)
		return cgroup_check(c, file, TH_FILE_OPEN);
	if (!dentry_protected(d))
		return 0;
	return refuse_dentry(c, TM_FILE_WRITE, TH_FILE_OPEN, fmode, d);
}

// file_permission sees every write to a cgroup file, also through a file
// descriptor opened before the agent was there, and the pid written to a
// cgroup.procs (the agent moved out of its cgroup). Only write(2) and
// pwrite64(2) are read; see docs/tamper.md.
SEC("lsm/file_permission")
int BPF_PROG(tamper_file_permission, struct file *file, int mask)
{
	if (!(mask & MAY_WRITE))
		return 0;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (BPF_CORE_READ(inode, i_sb, s_magic) != CGROUP2_SUPER_MAGIC)
		return 0;
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	int ret = cgroup_check(c, file, TH_FILE_PERMISSION);
	if (ret)
		return ret;
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	const char *kname = (const char *)BPF_CORE_READ(d, d_name.name);
	char name[16] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), kname);
	if (!is_name(name, "cgroup.procs", 13) && !is_name(name, "cgroup.threads", 15))
		return 0;
	struct pt_regs___x86 *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 nr = BPF_CORE_READ(regs, orig_ax);
	if (nr != NR_WRITE && nr != NR_PWRITE64)
		return 0;
	char buf[16] = {};
	if (bpf_probe_read_user(buf, sizeof(buf) - 1, (void *)BPF_CORE_READ(regs, si)) < 0)
		return 0;
	__u32 pid = 0;
	int i = 0;
	for (; i < 12; i++) {
		char ch = buf[i];
		if (ch < '0' || ch > '9')
			break;
		pid = pid * 10 + (ch - '0');
	}
	if (i == 0 || pid != c->agent_tgid)
		return 0;
	return refuse(c, TM_CGROUP_MOVE, TH_FILE_PERMISSION, pid, c->agent_tgid,
		      BPF_CORE_READ(d, d_parent, d_inode, i_ino), 0, kname);
}

SEC("lsm/path_truncate")
int BPF_PROG(tamper_path_truncate, const struct path *path)
{
	return path_check(TM_FILE_TRUNCATE, TH_PATH_TRUNCATE, path);
}

SEC("lsm/path_chmod")
int BPF_PROG(tamper_path_chmod, const struct path *path, umode_t mode)
{
	return path_check(TM_FILE_CHMOD, TH_PATH_CHMOD, path);
}

SEC("lsm/path_chown")
int BPF_PROG(tamper_path_chown, const struct path *path)
{
	return path_check(TM_FILE_CHOWN, TH_PATH_CHOWN, path);
}

SEC("lsm/path_unlink")
int BPF_PROG(tamper_path_unlink, const struct path *dir, struct dentry *dentry)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c) || !dentry_protected(dentry))
		return 0;
	return refuse_dentry(c, TM_FILE_UNLINK, TH_PATH_UNLINK, 0, dentry);
}

SEC("lsm/path_rmdir")
int BPF_PROG(tamper_path_rmdir, const struct path *dir, struct dentry *dentry)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c) || !dentry_protected(dentry))
		return 0;
	return refuse_dentry(c, TM_FILE_UNLINK, TH_PATH_RMDIR, 0, dentry);
}

SEC("lsm/path_rename")
int BPF_PROG(tamper_path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, unsigned int flags)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	if (dentry_protected(old_dentry))
		return refuse_dentry(c, TM_FILE_RENAME, TH_PATH_RENAME, 0, old_dentry);
	if (dentry_protected(new_dentry))
		return refuse_dentry(c, TM_FILE_RENAME, TH_PATH_RENAME, 1, new_dentry);
	return 0;
}

// sb_mount: a mount (or bind mount) over a protected file or directory.
SEC("lsm/sb_mount")
int BPF_PROG(tamper_sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags,
	     void *data)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	struct dentry *d = BPF_CORE_READ(path, dentry);
	if (!dentry_protected(d))
		return 0;
	return refuse_dentry(c, TM_MOUNT, TH_SB_MOUNT, (__u32)flags, d);
}

SEC("lsm/move_mount")
int BPF_PROG(tamper_move_mount, const struct path *from_path, const struct path *to_path)
{
	return path_check(TM_MOUNT, TH_MOVE_MOUNT, to_path);
}

// The agent's last thread exits: the pinned programs go on refusing, and
// a process running the agent's binary may adopt them.
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tamper_agent_exit, struct task_struct *p)
{
	__u32 zero = 0;
	struct tamper_cfg *c = bpf_map_lookup_elem(&tamper_config, &zero);
	if (!c || !c->agent_tgid || c->orphaned || !is_agent_task(c, p))
		return 0;
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	c->orphaned = 1;
	return 0;
}

// ------------------------------------------------------------ BPF objects

static __always_inline int obj_protected(__u32 type, __u32 id)
{
	struct obj_key k = {.type = type, .id = id};
	return bpf_map_lookup_elem(&tamper_objs, &k) != NULL;
}

// fd_private returns file->private_data of the caller's fd, or NULL.
static __always_inline void *fd_private(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) < 0 || !f)
		return NULL;
	return BPF_CORE_READ(f, private_data);
}

// map_fd_id is the id of the map behind fd. A file that is not a map
// reads as some other number, which is then not a protected map id
// paired with a protected program (see link_fd_protected) or just not in
// the set: the object sets are small and ids are not reused while held.
static __always_inline __u32 map_fd_id(__u32 fd)
{
	struct bpf_map *m = fd_private(fd);
	return m ? BPF_CORE_READ(m, id) : 0;
}

static __always_inline int link_fd_protected(__u32 fd, __u32 *id)
{
	struct bpf_link *l = fd_private(fd);
	if (!l)
		return 0;
	*id = BPF_CORE_READ(l, id);
	return obj_protected(OBJ_LINK, *id) && obj_protected(OBJ_PROG, BPF_CORE_READ(l, prog, aux, id));
}

SEC("lsm/bpf")
int BPF_PROG(tamper_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	__u32 id = 0;
	switch (cmd) {
	case BPF_PROG_GET_FD_BY_ID:
		id = BPF_CORE_READ(attr, prog_id);
		if (obj_protected(OBJ_PROG, id))
			return refuse(c, TM_BPF_GET_FD, TH_BPF, cmd, 0, id, 0, NULL);
		return 0;
	case BPF_MAP_GET_FD_BY_ID:
		id = BPF_CORE_READ(attr, map_id);
		if (obj_protected(OBJ_MAP, id))
			return refuse(c, TM_BPF_GET_FD, TH_BPF, cmd, 0, id, 0, NULL);
		return 0;
	case BPF_LINK_GET_FD_BY_ID:
		id = BPF_CORE_READ(attr, link_id);
		if (obj_protected(OBJ_LINK, id))
			return refuse(c, TM_BPF_GET_FD, TH_BPF, cmd, 0, id, 0, NULL);
		return 0;
	case BPF_OBJ_GET: {
		char path[24] = {};
		const char *up = (const char *)BPF_CORE_READ(attr, pathname);
		if (bpf_probe_read_user_str(path, sizeof(path), up) < 0)
			return 0;
		// "/sys/fs/bpf/vigil": the agent's pins (see pin.go).
		if (!is_name(path, "/sys/fs/bpf/vigil", 17) || (path[17] != '/' && path[17] != 0))
			return 0;
		return refuse(c, TM_BPF_OBJ_GET, TH_BPF, cmd, 0, 0, 0, NULL);
	}
	case BPF_MAP_UPDATE_ELEM:
	case BPF_MAP_DELETE_ELEM:
	case BPF_MAP_LOOKUP_AND_DELETE_ELEM:
	case BPF_MAP_FREEZE:
		id = map_fd_id(BPF_CORE_READ(attr, map_fd));
		break;
	case BPF_MAP_UPDATE_BATCH:
	case BPF_MAP_DELETE_BATCH:
	case BPF_MAP_LOOKUP_AND_DELETE_BATCH:
		id = map_fd_id(BPF_CORE_READ(attr, batch.map_fd));
		break;
	case BPF_LINK_UPDATE:
		if (link_fd_protected(BPF_CORE_READ(attr, link_update.link_fd), &id))
			return refuse(c, TM_BPF_LINK, TH_BPF, cmd, 0, id, 0, NULL);
		return 0;
	case BPF_LINK_DETACH:
		if (link_fd_protected(BPF_CORE_READ(attr, link_detach.link_fd), &id))
			return refuse(c, TM_BPF_LINK, TH_BPF, cmd, 0, id, 0, NULL);
		return 0;
	default:
		return 0;
	}
	if (id && obj_protected(OBJ_MAP, id))
		return refuse(c, TM_BPF_MAP_WRITE, TH_BPF, cmd, 0, id, 0, NULL);
	return 0;
}

// bpf_map is asked whenever a file descriptor to a map is made, however
// (by id, from a pin, ...).
SEC("lsm/bpf_map")
int BPF_PROG(tamper_bpf_map, struct bpf_map *map, fmode_t fmode)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	__u32 id = BPF_CORE_READ(map, id);
	if (!obj_protected(OBJ_MAP, id))
		return 0;
	return refuse(c, TM_BPF_MAP, TH_BPF_MAP, fmode, 0, id, 0, NULL);
}

SEC("lsm/bpf_prog")
int BPF_PROG(tamper_bpf_prog, struct bpf_prog *prog)
{
	struct tamper_cfg *c = tcfg();
	if (!c || is_agent(c))
		return 0;
	__u32 id = BPF_CORE_READ(prog, aux, id);
	if (!obj_protected(OBJ_PROG, id))
		return 0;
	return refuse(c, TM_BPF_PROG, TH_BPF_PROG, 0, 0, id, 0, NULL);
}
