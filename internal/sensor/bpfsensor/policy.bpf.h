// SPDX-License-Identifier: GPL-2.0
// Policy evaluation in the kernel: included by sensor.bpf.c.
//
// A decision gathers facts (masks of the identity sets the process, its
// ancestors and the target are in; uid; cgroup; op) once, then scans the
// active slot's rules with bpf_loop; the first entry whose conditions all
// hold decides. Entries with ACT_SKIP are a rule's except blocks: they
// jump past the rule. Precedence lives here and in policy.Evaluate, the
// reference the tests hold this to.
#pragma once

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_cfg);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RULES *NSLOTS);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

// Decisions per rule entry, counted where they are made: exact even when
// events are lost on the way to userspace.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_RULES *NSLOTS);
	__type(key, __u32);
	__type(value, __u64);
} rule_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct path_key);
	__type(value, struct path_bits);
} path_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct cgroup_key);
	__type(value, __u64);
} cgroup_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct proc_facts);
} procs SEC(".maps");

// Digest sets of process.sha256 conditions, per slot.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sha_key);
	__type(value, __u64);
} sha_sets SEC(".maps");

// Each process's executable digest, on its thread group leader (see
// struct exe_sha). Filled at exec by xc_bprm_check (execctl.bpf.h), which
// hashes while execution control is on or policy.hash_exec is set; for
// processes that were running before, by the agent (pidfd-keyed update).
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct exe_sha);
} exe_shas SEC(".maps");

// Per-CPU room for one path component while it is hashed.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[NAME_MAX_BUF]);
} namebuf SEC(".maps");

// Name hash (NameHash in kpolicy.go): the name's bytes as little-endian
// 64-bit words, the last one zero-padded; per word h = (h ^ w) * P,
// h ^= h >> 29; finally h ^= length. Word-wise, so the verifier walks at
// most 32 steps.
#define NH_SEED 0xcbf29ce484222325ULL
#define NH_PRIME 0x100000001b3ULL

// active returns the active slot's config, or NULL if no policy is loaded.
static __always_inline struct slot_cfg *active_slot(__u32 *slot)
{
	__u32 zero = 0;
	struct policy_cfg *cfg = bpf_map_lookup_elem(&policy, &zero);
	if (!cfg)
		return NULL;
	__u32 s = cfg->active_slot & (NSLOTS - 1);
	struct slot_cfg *sc = &cfg->slots[s];
	if (!sc->version)
		return NULL;
	*slot = s;
	return sc;
}

// ------------------------------------------------------- identity walk

struct facts_walk {
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *dentry;
	__u32 slot;
	__u32 level;
	__u64 facts;
};

static __always_inline __u64 name_hash(const unsigned char *name)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&namebuf, &zero);
	if (!buf)
		return 0;
	long n = bpf_probe_read_kernel_str(buf, NAME_MAX_BUF, name);
	if (n <= 0)
		return 0;
	__u64 len = n - 1;
	__u64 h = NH_SEED;
	for (int i = 0; i < NAME_MAX_BUF / 8; i++) {
		__u64 off = (__u64)i * 8;
		if (off >= len)
			break;
		__u64 w = *(__u64 *)(buf + off);
		__u64 rest = len - off;
		if (rest < 8)
			w &= (1ULL << (rest * 8)) - 1;
		h ^= w;
		h *= NH_PRIME;
		h ^= h >> 29;
	}
	return h ^ len;
}

static long facts_step(__u32 i, void *data)
{
	struct facts_walk *w = data;
	struct dentry *parent;
	int up = path_up(&w->dentry, &w->vfsmnt, &w->mnt, &parent);
	if (up == UP_ROOT)
		return 1; // the root: it has no name
	if (up == UP_CROSSED)
		return 0;
	struct dentry *dentry = w->dentry;
	struct inode *dir = BPF_CORE_READ(parent, d_inode);
	struct path_key key = {
		.parent_ino = BPF_CORE_READ(dir, i_ino),
		.parent_dev = BPF_CORE_READ(dir, i_sb, s_dev),
		.name_hash = name_hash(BPF_CORE_READ(dentry, d_name.name)),
		.slot = w->slot,
	};
	struct path_bits *sets = bpf_map_lookup_elem(&path_sets, &key);
	if (sets) {
		if (w->level == 0)
			w->facts |= sets->exact;
		w->facts |= sets->prefix;
	}
	w->level++;
	w->dentry = parent;
	return 0;
}

// path_facts returns the path-set bits of (mnt, dentry) in slot: exact
// sets naming it, and prefix sets naming it or a directory above it. A
// global function, verified once per program; the pointers come as
// plain numbers and are only read through bpf_probe_read_kernel.
__noinline __u64 path_facts(__u64 mnt_addr, __u64 dentry_addr, __u32 slot)
{
	struct vfsmount *vfsmnt = (void *)mnt_addr;
	struct dentry *dentry = (void *)dentry_addr;
	if (!vfsmnt || !dentry)
		return 0;
	struct facts_walk w = {
		.vfsmnt = vfsmnt,
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.dentry = dentry,
		.slot = slot,
	};
	bpf_loop(PATH_DEPTH, facts_step, &w, 0);
	return w.facts;
}

static __always_inline __u64 file_facts(struct file *file, __u32 slot)
{
	if (!file)
		return 0;
	return path_facts((__u64)BPF_CORE_READ(file, f_path.mnt), (__u64)BPF_CORE_READ(file, f_path.dentry), slot);
}

static __always_inline __u64 exe_facts(struct task_struct *task, __u32 slot)
{
	return file_facts(BPF_CORE_READ(task, mm, exe_file), slot);
}

// --------------------------------------------------------- process facts

// proc_facts_of returns the cached facts of task's process for version,
// computing them when missing or stale. Ancestors are taken from the
// nearest ancestor whose facts are current, or walked.
static __noinline struct proc_facts *proc_facts_of(struct task_struct *task, __u32 slot, __u32 version)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct proc_facts *pf = bpf_map_lookup_elem(&procs, &tgid);
	if (pf && pf->version == version)
		return pf;

	struct proc_facts fresh = {.version = version};
	fresh.self = exe_facts(task, slot);
	struct task_struct *a = BPF_CORE_READ(task, real_parent);
	for (int i = 0; i < ANCESTOR_DEPTH; i++) {
		if (!a)
			break;
		__u32 atgid = BPF_CORE_READ(a, tgid);
		if (atgid == 0)
			break;
		struct proc_facts *af = bpf_map_lookup_elem(&procs, &atgid);
		if (af && af->version == version) {
			fresh.ancestors |= af->self | af->ancestors;
			break;
		}
		fresh.ancestors |= exe_facts(a, slot);
		if (atgid == 1)
			break;
		a = BPF_CORE_READ(a, real_parent);
	}
	bpf_map_update_elem(&procs, &tgid, &fresh, BPF_ANY);
	return bpf_map_lookup_elem(&procs, &tgid);
}

// is_descendant reports whether task descends from (or is) process tgid.
static __always_inline int is_descendant(struct task_struct *task, __u32 tgid)
{
	for (int i = 0; i < 32; i++) {
		if (!task)
			return 0;
		__u32 t = BPF_CORE_READ(task, tgid);
		if (t == tgid)
			return 1;
		if (t <= 1)
			return 0;
		task = BPF_CORE_READ(task, real_parent);
	}
	return 0;
}

// ------------------------------------------------------------- decision

// facts are what a decision is about. The caller sets kind, op, the
// target pointers and the memory flags; decide derives the rest from the
// slot it reads once.
struct facts {
	__u32 kind;
	__u32 op;
	// Target pointers, as addresses (only read through probe reads).
	__u64 tmnt; // target file's struct vfsmount (optional)
	__u64 tdentry;
	__u64 tmnt2; // second target file: rename/link (optional)
	__u64 tdentry2;
	__u64 ttask; // target process's struct task_struct (optional)
	__u64 self;
	__u64 ancestors;
	__u64 target;     // path-set bits of the target file(s)
	__u64 target_exe; // path-set bits of the target process's exe
	__u64 cgroups;    // cgroup-set bits
	__u64 sha;        // digest-set bits of the process's executable
	__u32 uid;
	__u32 not_desc;   // 1: target process is not a descendant
	__u32 writable;
	__u32 anon;
	__u32 pre_exec;   // 1: current's exe is already the new image (tp backend)
	__u32 _pad;
};

// verdict is the outcome of decide.
struct verdict {
	__u8 action;  // enum verdict_action; ACT_NONE: no rule matched
	__u8 enforce;
	__u16 rule_index;
	__u32 version;
};

// One decision's facts per CPU: too big for the 512 bytes of stack the
// whole call chain shares.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct facts);
} factsbuf SEC(".maps");

static __always_inline struct facts *facts_buf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&factsbuf, &zero);
}

struct scan {
	struct facts *f;
	__u32 slot;
	__u32 n;
	__u32 next;
	__u32 hit; // entry index + 1
	__u8 action;
	__u8 enforce;
	__u16 rule_index;
};

static __always_inline int rule_matches(struct rule *r, struct facts *f)
{
	__u32 c = r->conds;
	if (!(r->kinds & KIND_BIT(f->kind)))
		return 0;
	if ((c & C_EXE) && !(f->self & r->exe_mask))
		return 0;
	if ((c & C_EXE_PREFIX) && !(f->self & r->exe_prefix_mask))
		return 0;
	if ((c & C_ANCESTOR) && !(f->ancestors & r->anc_mask))
		return 0;
	if ((c & C_CGROUP) && !(f->cgroups & r->cgroup_mask))
		return 0;
	if ((c & C_SHA) && !(f->sha & r->sha_mask))
		return 0;
	if ((c & C_TPATH) && !(f->target & r->tpath_mask))
		return 0;
	if ((c & C_TPREFIX) && !(f->target & r->tprefix_mask))
		return 0;
	if ((c & C_TEXE) && !(f->target_exe & r->texe_mask))
		return 0;
	if ((c & C_NOT_DESC) && !f->not_desc)
		return 0;
	if ((c & C_IS_DESC) && f->not_desc)
		return 0;
	if ((c & C_PROT_WRITE) && !f->writable)
		return 0;
	if ((c & C_ANON) && !f->anon)
		return 0;
	if ((c & C_NOT_ANON) && f->anon)
		return 0;
	if ((c & C_OP) && !(r->ops & (1ULL << (f->op & 63))))
		return 0;
	if (c & C_UID_RANGE) {
		int ok = 0;
		for (int i = 0; i < UID_RANGES; i++) {
			if (i < (int)r->nuid && f->uid >= r->uid_lo[i] && f->uid <= r->uid_hi[i])
				ok = 1;
		}
		if (!ok)
			return 0;
	}
	return 1;
}

static long scan_step(__u32 i, void *data)
{
	struct scan *s = data;
	if (i >= s->n)
		return 1;
	if (i < s->next)
		return 0;
	__u32 idx = s->slot * MAX_RULES + i;
	struct rule *r = bpf_map_lookup_elem(&rules, &idx);
	if (!r)
		return 1;
	if (!rule_matches(r, s->f))
		return 0;
	if (r->action == ACT_SKIP) {
		s->next = r->skip_to;
		return 0;
	}
	s->hit = i + 1;
	s->action = r->action;
	s->enforce = r->enforce;
	s->rule_index = r->rule_index;
	return 1;
}

// cgroup_facts returns the cgroup-set bits of the current task's cgroup
// and its ancestors.
static __always_inline __u64 cgroup_facts(__u32 slot)
{
	__u64 bits = 0;
	for (int level = 0; level < 16; level++) {
		struct cgroup_key key = {.id = bpf_get_current_ancestor_cgroup_id(level), .slot = slot};
		if (!key.id)
			break;
		__u64 *m = bpf_map_lookup_elem(&cgroup_sets, &key);
		if (m)
			bits |= *m;
	}
	return bits;
}

// sha_facts returns the digest-set bits of the current process's
// executable; none when its digest is unknown.
static __always_inline __u64 sha_facts(__u32 slot)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exe_sha *e = bpf_task_storage_get(&exe_shas, task->group_leader, 0, 0);
	if (!e || !(e->flags & EXE_SHA_KNOWN))
		return 0;
	struct sha_key k = {.slot = slot};
	k.sha = e->cur;
	__u64 *bits = bpf_map_lookup_elem(&sha_sets, &k);
	return bits ? *bits : 0;
}

// decide runs the active policy on f and fills v. It returns 1 if the
// action must be refused (an enforced deny or kill). It is a global
// function: the verifier checks it once, not at each of the hooks that
// call it.
__noinline int decide(struct facts *f, struct verdict *v)
{
	if (!f || !v)
		return 0;
	__u32 slot = 0;
	struct slot_cfg *sc = active_slot(&slot);
	if (!sc || !(sc->kinds & KIND_BIT(f->kind)))
		return 0;
	__u32 version = sc->version;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (!f->pre_exec) {
		struct proc_facts *pf = proc_facts_of(task, slot, version);
		if (pf) {
			f->self = pf->self;
			f->ancestors = pf->ancestors;
		}
	} else {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		struct proc_facts *pf = bpf_map_lookup_elem(&procs, &tgid);
		if (pf && pf->version == version) {
			f->self = pf->self;
			f->ancestors = pf->ancestors;
		}
	}
	f->uid = BPF_CORE_READ(task, cred, uid.val);
	f->cgroups = cgroup_facts(slot);
	if (sc->ndigests)
		f->sha = sha_facts(slot);
	f->target = path_facts(f->tmnt, f->tdentry, slot) | path_facts(f->tmnt2, f->tdentry2, slot);
	if (f->ttask) {
		struct task_struct *target = (void *)f->ttask;
		struct proc_facts *tf = proc_facts_of(target, slot, version);
		if (tf)
			f->target_exe = tf->self;
		f->not_desc = !is_descendant(target, bpf_get_current_pid_tgid() >> 32);
	}

	struct scan s = {.f = f, .slot = slot, .n = sc->nrules};
	bpf_loop(MAX_RULES, scan_step, &s, 0);
	if (!s.hit)
		return 0;
	__u32 idx = slot * MAX_RULES + s.hit - 1;
	__u64 *hits = bpf_map_lookup_elem(&rule_hits, &idx);
	if (hits)
		*hits += 1;
	v->action = s.action;
	v->enforce = s.enforce;
	v->rule_index = s.rule_index;
	v->version = version;
	return s.enforce && (s.action == ACT_DENY || s.action == ACT_KILL);
}

// facts_on_fork gives a new process its parent's facts: the same exe,
// and the parent among its ancestors.
static __always_inline void facts_on_fork(struct task_struct *parent, __u32 child)
{
	__u32 slot = 0;
	struct slot_cfg *sc = active_slot(&slot);
	if (!sc)
		return;
	struct proc_facts *pf = proc_facts_of(parent, slot, sc->version);
	if (!pf)
		return;
	struct proc_facts cf = {
		.self = pf->self,
		.ancestors = pf->ancestors | pf->self,
		.version = pf->version,
	};
	bpf_map_update_elem(&procs, &child, &cf, BPF_ANY);
}

// facts_on_exec updates a process's exe facts to its new image.
static __always_inline void facts_on_exec(struct task_struct *task, struct file *exe)
{
	__u32 slot = 0;
	struct slot_cfg *sc = active_slot(&slot);
	if (!sc)
		return;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct proc_facts *pf = bpf_map_lookup_elem(&procs, &tgid);
	if (!pf || pf->version != sc->version)
		return; // computed from the new image when first needed
	pf->self = file_facts(exe, slot);
}

// exe_sha_on_fork gives a new process its parent's executable digest.
static __always_inline void exe_sha_on_fork(struct task_struct *child)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exe_sha *pe = bpf_task_storage_get(&exe_shas, task->group_leader, 0, 0);
	if (!pe || !(pe->flags & EXE_SHA_KNOWN))
		return;
	struct exe_sha *ce = bpf_task_storage_get(&exe_shas, child, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!ce)
		return;
	ce->cur = pe->cur;
	ce->flags = EXE_SHA_KNOWN;
}

// exe_sha_on_exec: the exec succeeded and the caller is now the thread
// group leader: the digest its bprm hook left pending is the process's.
// An unknown one leaves no entry: a process has an entry only while its
// digest is known or an exec of it is pending, so the agent may fill in a
// missing one (BPF_NOEXIST) without overwriting what the kernel learnt.
static __always_inline void exe_sha_on_exec(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exe_sha *e = bpf_task_storage_get(&exe_shas, task, 0, 0);
	if (!e || !(e->flags & EXE_SHA_PENDING))
		return;
	if (!(e->flags & EXE_SHA_PENDING_KNOWN)) {
		bpf_task_storage_delete(&exe_shas, task);
		return;
	}
	e->cur = e->pending;
	e->flags = EXE_SHA_KNOWN;
}

// exe_sha_pending records the digest of the image the current task is
// about to exec (NULL: unknown), for exe_sha_on_exec.
static __always_inline void exe_sha_pending(struct xc_digest *sha)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exe_sha *e;
	if (sha)
		e = bpf_task_storage_get(&exe_shas, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	else
		e = bpf_task_storage_get(&exe_shas, task, 0, 0); // nothing known: nothing to forget
	if (!e)
		return;
	if (sha) {
		e->pending = *sha;
		e->flags |= EXE_SHA_PENDING | EXE_SHA_PENDING_KNOWN;
	} else {
		e->flags = (e->flags | EXE_SHA_PENDING) & ~EXE_SHA_PENDING_KNOWN;
	}
}

// exe_sha_wanted: some policy (in force or being applied) needs digests.
static __always_inline int exe_sha_wanted(void)
{
	__u32 zero = 0;
	struct policy_cfg *cfg = bpf_map_lookup_elem(&policy, &zero);
	return cfg && cfg->hash_exec;
}
