//go:build ignore

// SPDX-License-Identifier: GPL-2.0
// Vigil sensors: one object, two backends. The loader keeps the programs of
// the chosen backend (see programs.go):
//   common      tp_btf/sched_process_{exec,fork,exit} and syscall
//               tracepoints for ptrace, process_vm_writev, bpf, module and
//               kexec loads;
//   lsm         lsm/mmap_file, lsm/file_mprotect, lsm/file_open;
//   tracepoint  sys_enter_mmap, sys_enter_mprotect, sys_exit_open*.
// Every event carries a sequence number taken when it is created; an event
// the ring buffer cannot take is counted in lost_events, so holes in the
// numbering and the counter both show loss.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "sensor.h"

char LICENSE[] SEC("license") = "GPL";

// Set by the loader before load.
volatile const __u32 agent_tgid = 0;
// 1 when the lsm backend is loaded: decisions are made in LSM hooks;
// otherwise exec rules are enforced by killing the new image.
volatile const __u32 lsm_backend = 0;

// Read by the agent.
__u64 seq_counter = 0;
__u64 lost_events = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); // resized by the loader
} events SEC(".maps");

// One event under construction per CPU. Programs here are not sleepable and
// run with migration disabled; see the README for the preemption caveat.
struct event_buf {
	struct event_hdr h;
	__u8 data[DATA_MAX + SLOT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_buf);
} scratch SEC(".maps");

// Kernel versions differ in how these are laid out (6.3 moved vm_flags and
// vm_start into anonymous unions); CO-RE finds the members by name.
struct vm_area_struct___v {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_flags;
	struct file *vm_file;
} __attribute__((preserve_access_index));

// Syscall tracepoint contexts: a stable layout (see the tracepoints'
// format files), declared here without CO-RE so the verifier sees plain
// context loads.
struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

#define FMODE_WRITE 0x2
#define PROT_WRITE 0x2
#define PROT_EXEC 0x4
#define MAP_ANONYMOUS 0x20
#define VM_WRITE 0x2
#define VM_EXEC 0x4
#define S_IFMT 00170000
#define S_IFCHR 0020000
#define PROC_SUPER_MAGIC 0x9fa0
#define MINORBITS 20
#define MKDEV(ma, mi) (((ma) << MINORBITS) | (mi))

#define PTRACE_POKETEXT 4
#define PTRACE_POKEDATA 5
#define PTRACE_POKEUSR 6
#define PTRACE_SETREGS 13
#define PTRACE_SETFPREGS 15
#define PTRACE_ATTACH 16
#define PTRACE_SETREGSET 0x4205
#define PTRACE_SEIZE 0x4206

static __always_inline int is_agent(void)
{
	return agent_tgid && (bpf_get_current_pid_tgid() >> 32) == agent_tgid;
}

// new_event returns the per-CPU buffer with the header filled for the
// current task, or NULL.
static __always_inline struct event_buf *new_event(__u32 kind, __u32 hook)
{
	__u32 zero = 0;
	struct event_buf *b = bpf_map_lookup_elem(&scratch, &zero);
	if (!b)
		return NULL;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct event_hdr *h = &b->h;
	__builtin_memset(h, 0, sizeof(*h));
	h->seq = __sync_fetch_and_add(&seq_counter, 1) + 1;
	h->ktime = bpf_ktime_get_boot_ns();
	h->kind = kind;
	h->hook = hook;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = BPF_CORE_READ(task, cred, uid.val);
	h->euid = BPF_CORE_READ(task, cred, euid.val);
	h->gid = BPF_CORE_READ(task, cred, gid.val);
	h->start_time = BPF_CORE_READ(task, group_leader, start_boottime);
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	return b;
}

static __always_inline void submit(struct event_buf *b, __u32 len)
{
	if (len > DATA_MAX)
		len = DATA_MAX;
	b->h.data_len = len;
	__u64 size = sizeof(b->h) + len;
	// Bound the register passed to the helper itself: the verifier can
	// lose the bound of len when the compiler reuses another register.
	if (size > sizeof(b->h) + DATA_MAX)
		size = sizeof(b->h) + DATA_MAX;
	asm volatile("" : "+r"(size));
	// No wakeup: the reader polls every readerPoll (bpfsensor.go).
	if (bpf_ringbuf_output(&events, b, size, BPF_RB_NO_WAKEUP) < 0)
		__sync_fetch_and_add(&lost_events, 1);
}

// put_str copies a NUL-terminated kernel string into the data area at off
// and returns the new offset. slot is one of the STR_* indexes.
static __always_inline __u32 put_kstr(struct event_buf *b, __u32 off, int slot, const char *s)
{
	long n = bpf_probe_read_kernel_str(&b->data[off & (DATA_MAX - 1)], SLOT_MAX, s);
	if (n <= 0)
		return off;
	b->h.str_off[slot & (NSTR - 1)] = off;
	b->h.str_len[slot & (NSTR - 1)] = n;
	return off + n;
}

enum path_up_result {
	UP_NAMED,   // dentry has a name; *parent is its directory
	UP_CROSSED, // dentry was a mount's root: moved to its mount point
	UP_ROOT,    // dentry is the root of the mount tree
};

// path_up is one step of a walk towards the root, across mount points
// through struct mount. Both the path builder (put_path) and the policy's
// identity walk (path_facts) go up with it.
static __always_inline int path_up(struct dentry **dentry, struct vfsmount **vfsmnt, struct mount **mnt,
				   struct dentry **parent)
{
	// Plain locals: BPF_CORE_READ makes its whole first argument a
	// relocation, which a pointer into a local struct cannot satisfy.
	struct dentry *d = *dentry;
	struct vfsmount *vm = *vfsmnt;
	struct mount *m = *mnt;
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *p = BPF_CORE_READ(d, d_parent);
	*parent = p;
	if (d != mnt_root && d != p)
		return UP_NAMED;
	struct mount *mnt_parent = BPF_CORE_READ(m, mnt_parent);
	if (d != mnt_root || mnt_parent == m)
		return UP_ROOT;
	*dentry = BPF_CORE_READ(m, mnt_mountpoint);
	*mnt = mnt_parent;
	*vfsmnt = __builtin_preserve_access_index(&mnt_parent->mnt);
	return UP_CROSSED;
}

// path_walk is the state of one put_path walk, one step per bpf_loop
// iteration (so the verifier checks a step once, not PATH_DEPTH times).
struct path_walk {
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *dentry;
	__u32 off;
	int done;
};

static long path_step(__u32 i, void *data)
{
	struct path_walk *w = data;
	__u32 zero = 0;
	struct event_buf *b = bpf_map_lookup_elem(&scratch, &zero);
	if (!b)
		return 1;
	struct dentry *parent;
	int up = path_up(&w->dentry, &w->vfsmnt, &w->mnt, &parent);
	if (up == UP_ROOT) {
		w->done = 1;
		return 1;
	}
	if (up == UP_CROSSED)
		return 0;
	struct dentry *dentry = w->dentry;
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	long n = bpf_probe_read_kernel_str(&b->data[w->off & (DATA_MAX - 1)], NAME_MAX_BUF, name);
	if (n <= 0)
		return 1;
	w->off += n;
	if (w->off >= DATA_MAX - NAME_MAX_BUF)
		return 1;
	w->dentry = parent;
	return 0;
}

// put_path writes the path of (mnt, dentry) into the data area as its
// components, leaf first, each NUL-terminated; the agent reverses them.
// Walking up crosses mount points through struct mount. A path deeper than
// PATH_DEPTH components is cut at the top and flagged.
static __always_inline __u32 put_path(struct event_buf *b, __u32 off, int slot,
				      struct vfsmount *vfsmnt, struct dentry *dentry)
{
	struct path_walk w = {
		.vfsmnt = vfsmnt,
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.dentry = dentry,
		.off = off,
	};
	bpf_loop(PATH_DEPTH, path_step, &w, 0);
	if (!w.done)
		b->h.flags |= 1 << (FLAG_PATH0_TRUNC + (slot & (NSTR - 1)));
	b->h.str_off[slot & (NSTR - 1)] = off;
	b->h.str_len[slot & (NSTR - 1)] = w.off - off;
	return w.off;
}

static __always_inline __u32 put_file(struct event_buf *b, __u32 off, int slot, struct file *file)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (slot == STR_PATH) {
		b->h.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		b->h.ino = BPF_CORE_READ(inode, i_ino);
	} else {
		b->h.dev2 = BPF_CORE_READ(inode, i_sb, s_dev);
		b->h.ino2 = BPF_CORE_READ(inode, i_ino);
	}
	return put_path(b, off, slot, BPF_CORE_READ(file, f_path.mnt), BPF_CORE_READ(file, f_path.dentry));
}

static __always_inline struct file *fd_file(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

#include "policy.bpf.h"

#define EPERM 1
#define SIGKILL 9

// record copies a verdict into an event header.
static __always_inline void record(struct event_hdr *h, struct verdict *v, __u8 by, int refused)
{
	if (!v->action)
		return;
	h->action = v->action;
	h->enforce = v->enforce;
	h->rule_index = v->rule_index;
	h->policy_version = v->version;
	h->decided_by = by;
	h->denied = refused;
}

// refuse ends an action the policy refused: kill also kills the caller.
static __always_inline int refuse(struct verdict *v)
{
	if (v->action == ACT_KILL)
		bpf_send_signal(SIGKILL);
	return -EPERM;
}

// Verdicts of lsm/bprm_check_security, by thread, for the exec event
// that follows a successful exec.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct verdict);
} exec_verdicts SEC(".maps");

#include "execctl.bpf.h"

// ------------------------------------------------------------- processes

static __always_inline __u32 put_exec(struct event_buf *b, struct linux_binprm *bprm)
{
	__u32 off = put_file(b, 0, STR_PATH, BPF_CORE_READ(bprm, file));
	return put_kstr(b, off, STR_NAME, BPF_CORE_READ(bprm, filename));
}

// lsm/bprm_check_security decides an exec before the new image replaces
// the caller (for a #! script: once for the script, once for the
// interpreter).
SEC("lsm/bprm_check_security")
int BPF_PROG(lsm_bprm_check, struct linux_binprm *bprm)
{
	if (is_agent())
		return 0;
	struct file *file = BPF_CORE_READ(bprm, file);
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){
		.kind = KIND_EXEC,
		.op = OP_EXEC,
		.tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt),
		.tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry),
	};
	struct verdict v = {};
	int no = decide(f, &v);
	if (!v.action)
		return 0;
	if (!no) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct verdict *prev = bpf_map_lookup_elem(&exec_verdicts, &tid);
		if (!prev || prev->action < v.action)
			bpf_map_update_elem(&exec_verdicts, &tid, &v, BPF_ANY);
		return 0;
	}
	// Refused: there will be no sched_process_exec; report it here.
	struct event_buf *b = new_event(KIND_EXEC, HOOK_LSM_BPRM_CHECK);
	if (b) {
		b->h.op = OP_EXEC;
		record(&b->h, &v, BY_LSM, 1);
		submit(b, put_exec(b, bprm));
	}
	return refuse(&v);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (is_agent())
		return 0;
	exe_sha_on_exec();
	struct file *file = BPF_CORE_READ(bprm, file);
	struct verdict v = {};
	int killed = 0;
	__u8 by = BY_LSM;
	if (lsm_backend) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct verdict *pv = bpf_map_lookup_elem(&exec_verdicts, &tid);
		if (pv) {
			v = *pv;
			bpf_map_delete_elem(&exec_verdicts, &tid);
		}
	} else {
		// No LSM: the last resort is to kill the new image before it
		// runs user code. The process's facts are its pre-exec ones.
		struct facts *f = facts_buf();
		if (!f)
			return 0;
		*f = (struct facts){
			.kind = KIND_EXEC,
			.op = OP_EXEC,
			.tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt),
			.tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry),
			.pre_exec = 1,
		};
		by = BY_KILL_AFTER_EXEC;
		if (decide(f, &v)) {
			bpf_send_signal(SIGKILL);
			killed = 1;
		}
	}
	facts_on_exec(p, file);

	struct event_buf *b = new_event(KIND_EXEC, HOOK_SCHED_EXEC);
	if (!b)
		return 0;
	record(&b->h, &v, by, killed);
	__u32 off = put_exec(b, bprm);
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	off = put_path(b, off, STR_PATH2, BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry));

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 len = arg_end - arg_start;
	off &= DATA_MAX - 1;
	if (len > DATA_MAX - off) {
		len = DATA_MAX - off;
		b->h.flags |= 1 << FLAG_ARGV_TRUNC;
	}
	if (len > ARGV_MAX) {
		len = ARGV_MAX;
		b->h.flags |= 1 << FLAG_ARGV_TRUNC;
	}
	if (len && bpf_probe_read_user(&b->data[off], len, (void *)arg_start) == 0) {
		b->h.str_off[STR_ARGV] = off;
		b->h.str_len[STR_ARGV] = len;
		off += len;
	}
	submit(b, off);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0; // a new thread, not a new process
	if (is_agent())
		return 0;
	facts_on_fork(parent, BPF_CORE_READ(child, tgid));
	exe_sha_on_fork(child);
	struct event_buf *b = new_event(KIND_FORK, HOOK_SCHED_FORK);
	if (!b)
		return 0;
	b->h.arg0 = BPF_CORE_READ(child, tgid);
	b->h.arg1 = BPF_CORE_READ(child, start_boottime);
	submit(b, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	// Report the process once, when its last thread exits.
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&procs, &tgid);
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_EXIT, HOOK_SCHED_EXIT);
	if (!b)
		return 0;
	__u32 code = BPF_CORE_READ(p, exit_code);
	if (BPF_CORE_READ(p, signal, flags) & 0x4 /* SIGNAL_GROUP_EXIT */)
		code = BPF_CORE_READ(p, signal, group_exit_code);
	b->h.arg0 = code;
	submit(b, 0);
	return 0;
}

// ------------------------------------------------------ executable memory

static __always_inline void mmap_event(__u32 hook, struct file *file, __u64 addr, __u64 len,
				       __u64 prot, __u64 flags, struct verdict *v, int refused)
{
	struct event_buf *b = new_event(file ? KIND_IMAGE : KIND_MEMEXEC, hook);
	if (!b)
		return;
	b->h.op = OP_MMAP;
	b->h.arg0 = addr;
	b->h.arg1 = len;
	b->h.arg2 = prot;
	b->h.arg3 = flags;
	if (v)
		record(&b->h, v, BY_LSM, refused);
	__u32 off = 0;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	else
		b->h.flags |= 1 << FLAG_ANON;
	submit(b, off);
}

static __always_inline void mprotect_event(__u32 hook, struct vm_area_struct___v *vma, __u64 addr,
					   __u64 len, __u64 prot, struct verdict *v, int refused)
{
	struct event_buf *b = new_event(KIND_MEMEXEC, hook);
	if (!b)
		return;
	b->h.op = OP_MPROTECT;
	b->h.arg0 = addr;
	b->h.arg1 = len;
	b->h.arg2 = prot;
	b->h.arg3 = vma ? BPF_CORE_READ(vma, vm_flags) & 7 : 0; // VM_READ|VM_WRITE|VM_EXEC = PROT_*
	if (v)
		record(&b->h, v, BY_LSM, refused);
	__u32 off = 0;
	struct file *file = vma ? BPF_CORE_READ(vma, vm_file) : NULL;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	else if (vma)
		b->h.flags |= 1 << FLAG_ANON;
	submit(b, off);
}

// exec_image_mapping: the kernel is mapping the program being exec'd (the
// ELF loader, inside the current task's execve, after the new mm names
// the file as its exe). The exec event already reports that file; the
// interpreter, mapped the same way, is another file and still reported.
static __always_inline int exec_image_mapping(struct file *file)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (!file || !BPF_CORE_READ_BITFIELD_PROBED(task, in_execve))
		return 0;
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	return exe && BPF_CORE_READ(exe, f_inode) == BPF_CORE_READ(file, f_inode);
}

SEC("lsm/mmap_file")
int BPF_PROG(lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags)
{
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){
		.kind = file ? KIND_IMAGE : KIND_MEMEXEC,
		.op = OP_MMAP,
		.writable = !!(prot & PROT_WRITE),
		.anon = !file,
	};
	if (file) {
		f->tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt);
		f->tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
	}
	struct verdict v = {};
	int no = decide(f, &v);
	// The program's own mapping at exec is decided like any other, but
	// reported only if a rule acted on it: the exec event names it.
	if (v.action != ACT_NONE || !exec_image_mapping(file))
		mmap_event(HOOK_LSM_MMAP_FILE, file, 0, 0, prot, flags, &v, no);
	return no ? refuse(&v) : 0;
}

SEC("lsm/file_mprotect")
int BPF_PROG(lsm_file_mprotect, struct vm_area_struct *vma_, unsigned long reqprot,
	     unsigned long prot)
{
	struct vm_area_struct___v *vma = (void *)vma_;
	__u64 vm_flags = BPF_CORE_READ(vma, vm_flags);
	if (!(prot & PROT_EXEC) || (vm_flags & VM_EXEC) || is_agent())
		return 0;
	struct file *file = BPF_CORE_READ(vma, vm_file);
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){
		.kind = KIND_MEMEXEC,
		.op = OP_MPROTECT,
		.writable = (vm_flags & VM_WRITE) || (prot & PROT_WRITE),
		.anon = !file,
	};
	if (file) {
		f->tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt);
		f->tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
	}
	struct verdict v = {};
	int no = decide(f, &v);
	__u64 start = BPF_CORE_READ(vma, vm_start);
	mprotect_event(HOOK_LSM_FILE_MPROTECT, vma, start, BPF_CORE_READ(vma, vm_end) - start, prot, &v, no);
	return no ? refuse(&v) : 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int tp_sys_enter_mmap(struct sys_enter_ctx *ctx)
{
	__u64 prot = ctx->args[2], flags = ctx->args[3];
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	struct file *file = NULL;
	if (!(flags & MAP_ANONYMOUS)) {
		file = fd_file(ctx->args[4]);
		if (!file)
			return 0; // bad fd: the mmap fails
	}
	mmap_event(HOOK_TP_MMAP, file, ctx->args[0], ctx->args[1], prot, flags, NULL, 0);
	return 0;
}

struct vma_info {
	__u64 addr;
	struct vm_area_struct___v *vma;
	__u64 flags;
};

static long find_vma_cb(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct vma_info *info = data;
	struct vm_area_struct___v *v = (void *)vma;
	info->vma = v;
	info->flags = BPF_CORE_READ(v, vm_flags);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mprotect")
int tp_sys_enter_mprotect(struct sys_enter_ctx *ctx)
{
	__u64 prot = ctx->args[2];
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	struct vma_info info = {.addr = ctx->args[0]};
	struct task_struct *task = bpf_get_current_task_btf();
	bpf_find_vma(task, info.addr, find_vma_cb, &info, 0);
	if (info.vma && (info.flags & VM_EXEC))
		return 0; // already executable: nothing is added
	mprotect_event(HOOK_TP_MPROTECT, info.vma, ctx->args[0], ctx->args[1], prot, NULL, 0);
	return 0;
}

// ------------------------------------------------------------ file opens

// proc_task returns the task a /proc/PID/... inode belongs to.
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

#define TRACEFS_MAGIC 0x74726163

// classify_open says what an open is: an injection (/proc/PID/mem for
// write), a kernel read or change (/dev/mem, /dev/kmem, /dev/port,
// /proc/kcore, tracefs for write), or a file modification (any open for
// write). It returns the kind, or 0.
static __always_inline __u32 classify_open(struct file *file, __u32 *op)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	__u32 mode = BPF_CORE_READ(inode, i_mode);
	__u32 fmode = BPF_CORE_READ(file, f_mode);
	__u64 magic = BPF_CORE_READ(inode, i_sb, s_magic);

	if ((mode & S_IFMT) == S_IFCHR) {
		__u32 rdev = BPF_CORE_READ(inode, i_rdev);
		if (rdev == MKDEV(1, 1) || rdev == MKDEV(1, 2) || rdev == MKDEV(1, 4)) {
			*op = OP_DEV_MEM;
			return KIND_KERNEL;
		}
	} else if (magic == PROC_SUPER_MAGIC) {
		char name[8] = {};
		bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
		if (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 0 && (fmode & FMODE_WRITE)) {
			*op = OP_PROC_MEM;
			return KIND_INJECT;
		}
		if (name[0] == 'k' && name[1] == 'c' && name[2] == 'o' && name[3] == 'r' && name[4] == 'e' &&
		    name[5] == 0) {
			*op = OP_KCORE;
			return KIND_KERNEL;
		}
	} else if (magic == TRACEFS_MAGIC && (fmode & FMODE_WRITE)) {
		*op = OP_TRACEFS_WRITE;
		return KIND_KERNEL;
	}
	if (fmode & FMODE_WRITE) {
		*op = OP_FILE_OPEN_WRITE;
		return KIND_FILE;
	}
	return 0;
}

static __always_inline void open_event(__u32 hook, struct file *file, __u32 kind, __u32 op,
				       struct verdict *v, int refused)
{
	struct event_buf *b = new_event(kind, hook);
	if (!b)
		return;
	b->h.op = op;
	b->h.arg0 = BPF_CORE_READ(file, f_mode);
	if (v)
		record(&b->h, v, BY_LSM, refused);
	submit(b, put_file(b, 0, STR_PATH, file));
}

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file)
{
	if (file->f_mode & FMODE_WRITE)
		xc_invalidate(file->f_inode);
	if (is_agent())
		return 0;
	__u32 op = 0;
	__u32 kind = classify_open(file, &op);
	if (!kind)
		return 0;
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){
		.kind = kind,
		.op = op,
		.tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt),
		.tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry),
	};
	if (op == OP_PROC_MEM)
		f->ttask = (__u64)proc_task(BPF_CORE_READ(file, f_inode));
	struct verdict v = {};
	int no = decide(f, &v);
	// Every open for write is a file modification, but only those a rule
	// is about are worth an event.
	if (kind != KIND_FILE || v.action)
		open_event(HOOK_LSM_FILE_OPEN, file, kind, op, &v, no);
	return no ? refuse(&v) : 0;
}

static __always_inline int on_open_exit(struct sys_exit_ctx *ctx, __u32 hook)
{
	long ret = ctx->ret;
	if (ret < 0 || is_agent())
		return 0;
	struct file *file = fd_file(ret);
	if (!file)
		return 0;
	__u32 op = 0;
	__u32 kind = classify_open(file, &op);
	if (kind && kind != KIND_FILE)
		open_event(hook, file, kind, op, NULL, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tp_sys_exit_openat(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int tp_sys_exit_openat2(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPENAT2);
}

SEC("tracepoint/syscalls/sys_exit_open")
int tp_sys_exit_open(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPEN);
}

// ------------------------------------------------------ file modification

// file_op decides a change to the entry (dir, dentry), and to a second
// one for rename and link. Only changes a rule is about are reported.
static __always_inline int file_op(__u32 hook, __u32 op, const struct path *dir, struct dentry *dentry,
				   const struct path *dir2, struct dentry *dentry2)
{
	if (is_agent())
		return 0;
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){
		.kind = KIND_FILE,
		.op = op,
		.tmnt = (__u64)BPF_CORE_READ(dir, mnt),
		.tdentry = (__u64)dentry,
	};
	if (dir2) {
		f->tmnt2 = (__u64)BPF_CORE_READ(dir2, mnt);
		f->tdentry2 = (__u64)dentry2;
	}
	struct verdict v = {};
	int no = decide(f, &v);
	if (!v.action)
		return 0;
	struct event_buf *b = new_event(KIND_FILE, hook);
	if (b) {
		b->h.op = op;
		record(&b->h, &v, BY_LSM, no);
		struct inode *inode = BPF_CORE_READ(dentry, d_inode);
		if (inode) {
			b->h.dev = BPF_CORE_READ(inode, i_sb, s_dev);
			b->h.ino = BPF_CORE_READ(inode, i_ino);
		}
		__u32 off = put_path(b, 0, STR_PATH, BPF_CORE_READ(dir, mnt), dentry);
		if (dir2)
			off = put_path(b, off, STR_PATH2, BPF_CORE_READ(dir2, mnt), dentry2);
		submit(b, off);
	}
	return no ? refuse(&v) : 0;
}

SEC("lsm/path_unlink")
int BPF_PROG(lsm_path_unlink, const struct path *dir, struct dentry *dentry)
{
	return file_op(HOOK_LSM_PATH_UNLINK, OP_FILE_UNLINK, dir, dentry, NULL, NULL);
}

SEC("lsm/path_rmdir")
int BPF_PROG(lsm_path_rmdir, const struct path *dir, struct dentry *dentry)
{
	return file_op(HOOK_LSM_PATH_RMDIR, OP_FILE_UNLINK, dir, dentry, NULL, NULL);
}

SEC("lsm/path_mkdir")
int BPF_PROG(lsm_path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode)
{
	return file_op(HOOK_LSM_PATH_MKDIR, OP_FILE_CREATE, dir, dentry, NULL, NULL);
}

SEC("lsm/path_mknod")
int BPF_PROG(lsm_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)
{
	return file_op(HOOK_LSM_PATH_MKNOD, OP_FILE_CREATE, dir, dentry, NULL, NULL);
}

SEC("lsm/path_symlink")
int BPF_PROG(lsm_path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name)
{
	return file_op(HOOK_LSM_PATH_SYMLINK, OP_FILE_CREATE, dir, dentry, NULL, NULL);
}

SEC("lsm/path_link")
int BPF_PROG(lsm_path_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
{
	// The new name is decided; linking a protected file elsewhere too.
	return file_op(HOOK_LSM_PATH_LINK, OP_FILE_LINK, new_dir, new_dentry, new_dir, old_dentry);
}

SEC("lsm/path_rename")
int BPF_PROG(lsm_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)
{
	return file_op(HOOK_LSM_PATH_RENAME, OP_FILE_RENAME, old_dir, old_dentry, new_dir, new_dentry);
}

static __always_inline int path_op(__u32 hook, __u32 op, const struct path *path)
{
	return file_op(hook, op, path, BPF_CORE_READ(path, dentry), NULL, NULL);
}

SEC("lsm/path_chmod")
int BPF_PROG(lsm_path_chmod, const struct path *path, umode_t mode)
{
	return path_op(HOOK_LSM_PATH_CHMOD, OP_FILE_CHMOD, path);
}

SEC("lsm/path_chown")
int BPF_PROG(lsm_path_chown, const struct path *path)
{
	return path_op(HOOK_LSM_PATH_CHOWN, OP_FILE_CHOWN, path);
}

SEC("lsm/path_truncate")
int BPF_PROG(lsm_path_truncate, const struct path *path)
{
	xc_invalidate(path->dentry->d_inode);
	return path_op(HOOK_LSM_PATH_TRUNCATE, OP_FILE_TRUNCATE, path);
}

// ---------------------------------------------------------- code injection

struct pt_regs___x86 {
	unsigned long di;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

#define NR_PTRACE 101
#define NR_PROCESS_VM_WRITEV 311
#define PTRACE_MODE_ATTACH 0x02

static __always_inline int inject_event(__u32 hook, __u32 op, struct task_struct *target, __u64 req,
					struct verdict *v, int refused)
{
	struct event_buf *b = new_event(KIND_INJECT, hook);
	if (!b)
		return 0;
	b->h.op = op;
	b->h.arg0 = BPF_CORE_READ(target, tgid);
	b->h.arg1 = req;
	record(&b->h, v, BY_LSM, refused);
	submit(b, 0);
	return 0;
}

// lsm/ptrace_access_check is where ptrace attach and process_vm_writev
// ask for access to another process; the syscall tells which.
SEC("lsm/ptrace_access_check")
int BPF_PROG(lsm_ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	if (!(mode & PTRACE_MODE_ATTACH) || is_agent())
		return 0;
	struct pt_regs___x86 *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 nr = BPF_CORE_READ(regs, orig_ax);
	__u64 req = 0;
	__u32 op;
	if (nr == NR_PTRACE) {
		req = BPF_CORE_READ(regs, di);
		op = req == PTRACE_SEIZE ? OP_PTRACE_SEIZE : OP_PTRACE_ATTACH;
	} else if (nr == NR_PROCESS_VM_WRITEV) {
		op = OP_VM_WRITEV;
	} else {
		return 0; // reads, and /proc/PID/mem (decided at file_open)
	}
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){.kind = KIND_INJECT, .op = op, .ttask = (__u64)child};
	struct verdict v = {};
	int no = decide(f, &v);
	inject_event(HOOK_LSM_PTRACE_ACCESS, op, child, req, &v, no);
	return no ? refuse(&v) : 0;
}

// lsm/ptrace_traceme: the caller asks its parent to trace it.
SEC("lsm/ptrace_traceme")
int BPF_PROG(lsm_ptrace_traceme, struct task_struct *parent)
{
	if (is_agent())
		return 0;
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){.kind = KIND_INJECT, .op = OP_PTRACE_TRACEME, .ttask = (__u64)parent};
	struct verdict v = {};
	int no = decide(f, &v);
	inject_event(HOOK_LSM_PTRACE_TRACEME, OP_PTRACE_TRACEME, parent, 0, &v, no);
	return no ? refuse(&v) : 0;
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int tp_sys_enter_ptrace(struct sys_enter_ctx *ctx)
{
	__u64 req = ctx->args[0];
	__u32 op;
	switch (req) {
	case PTRACE_ATTACH:
		op = OP_PTRACE_ATTACH;
		break;
	case PTRACE_SEIZE:
		op = OP_PTRACE_SEIZE;
		break;
	case PTRACE_POKETEXT:
	case PTRACE_POKEDATA:
	case PTRACE_POKEUSR:
		op = OP_PTRACE_POKE;
		break;
	case PTRACE_SETREGS:
	case PTRACE_SETFPREGS:
	case PTRACE_SETREGSET:
		op = OP_PTRACE_SETREGS;
		break;
	default:
		return 0;
	}
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_INJECT, HOOK_TP_PTRACE);
	if (!b)
		return 0;
	b->h.op = op;
	b->h.arg0 = ctx->args[1]; // target pid
	b->h.arg1 = req;
	submit(b, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_process_vm_writev")
int tp_sys_enter_process_vm_writev(struct sys_enter_ctx *ctx)
{
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_INJECT, HOOK_TP_VM_WRITEV);
	if (!b)
		return 0;
	b->h.op = OP_VM_WRITEV;
	b->h.arg0 = ctx->args[0];
	submit(b, 0);
	return 0;
}

// ------------------------------------------------------- kernel tampering

static __always_inline int kernel_event(__u32 hook, __u32 op, struct file *file, struct verdict *v,
					int refused)
{
	struct event_buf *b = new_event(KIND_KERNEL, hook);
	if (!b)
		return 0;
	b->h.op = op;
	if (v)
		record(&b->h, v, BY_LSM, refused);
	__u32 off = 0;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	submit(b, off);
	return 0;
}

SEC("lsm/bpf")
int BPF_PROG(lsm_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	if (cmd != BPF_PROG_LOAD || is_agent())
		return 0;
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){.kind = KIND_KERNEL, .op = OP_BPF_PROG_LOAD};
	struct verdict v = {};
	int no = decide(f, &v);
	struct event_buf *b = new_event(KIND_KERNEL, HOOK_LSM_BPF);
	if (b) {
		b->h.op = OP_BPF_PROG_LOAD;
		b->h.arg0 = BPF_CORE_READ(attr, prog_type);
		record(&b->h, &v, BY_LSM, no);
		__u32 off = 0;
		long n = bpf_probe_read_kernel_str(&b->data[0], 16, attr->prog_name);
		if (n > 0) {
			b->h.str_off[STR_NAME] = 0;
			b->h.str_len[STR_NAME] = n;
			off = n;
		}
		submit(b, off);
	}
	return no ? refuse(&v) : 0;
}

static __always_inline int kernel_load(__u32 hook, __u32 op, struct file *file)
{
	struct facts *f = facts_buf();
	if (!f)
		return 0;
	*f = (struct facts){.kind = KIND_KERNEL, .op = op};
	if (file) {
		f->tmnt = (__u64)BPF_CORE_READ(file, f_path.mnt);
		f->tdentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
	}
	struct verdict v = {};
	int no = decide(f, &v);
	kernel_event(hook, op, file, &v, no);
	return no ? refuse(&v) : 0;
}

SEC("lsm/kernel_read_file")
int BPF_PROG(lsm_kernel_read_file, struct file *file, enum kernel_read_file_id id, bool contents)
{
	if (is_agent())
		return 0;
	if (id == bpf_core_enum_value(enum kernel_read_file_id, READING_MODULE))
		return kernel_load(HOOK_LSM_KERNEL_READ_FILE, OP_MODULE_LOAD, file);
	if (id == bpf_core_enum_value(enum kernel_read_file_id, READING_KEXEC_IMAGE) ||
	    id == bpf_core_enum_value(enum kernel_read_file_id, READING_KEXEC_INITRAMFS))
		return kernel_load(HOOK_LSM_KERNEL_READ_FILE, OP_KEXEC_LOAD, file);
	return 0;
}

SEC("lsm/kernel_load_data")
int BPF_PROG(lsm_kernel_load_data, enum kernel_load_data_id id, bool contents)
{
	if (is_agent())
		return 0;
	if (id == bpf_core_enum_value(enum kernel_load_data_id, LOADING_MODULE))
		return kernel_load(HOOK_LSM_KERNEL_LOAD_DATA, OP_MODULE_LOAD, NULL);
	if (id == bpf_core_enum_value(enum kernel_load_data_id, LOADING_KEXEC_IMAGE))
		return kernel_load(HOOK_LSM_KERNEL_LOAD_DATA, OP_KEXEC_LOAD, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int tp_sys_enter_bpf(struct sys_enter_ctx *ctx)
{
	if (ctx->args[0] != BPF_PROG_LOAD || is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_KERNEL, HOOK_TP_BPF);
	if (!b)
		return 0;
	b->h.op = OP_BPF_PROG_LOAD;
	union bpf_attr *attr = (void *)ctx->args[1];
	__u32 prog_type = 0;
	bpf_probe_read_user(&prog_type, sizeof(prog_type), &attr->prog_type);
	b->h.arg0 = prog_type;
	__u32 off = 0;
	long n = bpf_probe_read_user_str(&b->data[0], 16, attr->prog_name);
	if (n > 0) {
		b->h.str_off[STR_NAME] = 0;
		b->h.str_len[STR_NAME] = n;
		off = n;
	}
	submit(b, off);
	return 0;
}

static __always_inline int kernel_file_event(__u32 hook, __u32 op, long fd)
{
	if (is_agent())
		return 0;
	return kernel_event(hook, op, fd >= 0 ? fd_file(fd) : NULL, NULL, 0);
}

SEC("tracepoint/syscalls/sys_enter_init_module")
int tp_sys_enter_init_module(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_INIT_MODULE, OP_MODULE_LOAD, -1);
}

SEC("tracepoint/syscalls/sys_enter_finit_module")
int tp_sys_enter_finit_module(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_FINIT_MODULE, OP_MODULE_LOAD, ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_kexec_load")
int tp_sys_enter_kexec_load(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_KEXEC_LOAD, OP_KEXEC_LOAD, -1);
}

SEC("tracepoint/syscalls/sys_enter_kexec_file_load")
int tp_sys_enter_kexec_file_load(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_KEXEC_FILE_LOAD, OP_KEXEC_LOAD, ctx->args[0]);
}
