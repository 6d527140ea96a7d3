// SPDX-License-Identifier: GPL-2.0
// Execution control (included by sensor.bpf.c; LSM backend only).
//
// Every code-loading path ends in one of two LSM hooks: bprm_check_security
// (execve, execveat, fexecve, #! scripts) and mmap_file with PROT_EXEC (the
// dynamic loader mapping a program or library: ld.so ./prog, dlopen,
// LD_PRELOAD, the kernel mapping ld.so itself). file_mprotect catches
// memory turned executable later. Each is decided by the file's content:
//
//   1. xc_cache, inode local storage, holds the file's SHA-256 and the
//      verdict of the trust epoch it was decided in. It is deleted the
//      moment the file is opened for writing or truncated (xc_invalidate),
//      and never created while a writer has the file open or for a file
//      without a name (memfd, deleted), so a cached digest is always the
//      digest of the content now.
//   2. A miss is hashed in the kernel by IMA (bpf_ima_file_hash, sleepable
//      programs), synchronously, before the code runs.
//   3. The digest is looked up in xc_trust, the agent's merged trust set
//      (explicit deny, approvals, catalogs, dpkg, scanned database). A
//      stale epoch re-reads xc_trust without hashing again.
//
// Unknown or denied code is refused in lockdown mode (EPERM) and recorded
// in both modes (an event with the digest, for `vigil pending`).
#pragma once

#define HASH_ALGO_SHA256 4
#define XC_TRUST_MAX (1 << 18)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xc_cfg);
} xc_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XC_TRUST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xc_digest);
	__type(value, __u32); // enum xc_verdict
} xc_trust SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct xc_entry);
} xc_cache SEC(".maps");

// Executables allowed to make anonymous memory executable (JITs).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct xc_file_key);
	__type(value, __u32);
} xc_anon_allow SEC(".maps");

static __always_inline struct xc_cfg *xc_cfg_get(void)
{
	__u32 zero = 0;
	struct xc_cfg *c = bpf_map_lookup_elem(&xc_config, &zero);
	if (!c || c->mode == XC_OFF)
		return NULL;
	return c;
}

// xc_invalidate forgets what is known about inode's content: it is about
// to change. Called for every open for write and every truncate, whatever
// the mode, so that turning execution control on never finds stale
// entries.
static __always_inline void xc_invalidate(struct inode *inode)
{
	if (inode)
		bpf_inode_storage_delete(&xc_cache, inode);
}

struct xc_result {
	struct xc_digest sha;
	__u32 verdict; // enum xc_verdict
	__u16 reason;  // enum xc_reason
	__u8 cached;
	__u8 hashed;
};

static __always_inline __u32 xc_lookup(struct xc_digest *sha)
{
	__u32 *v = bpf_map_lookup_elem(&xc_trust, sha);
	return v ? *v : XC_V_UNKNOWN;
}

// xc_decide_file decides one file. With may_hash unset (the caller holds
// the mmap lock) a cache miss is not hashed and stays unknown.
static __always_inline void xc_decide_file(struct xc_cfg *cfg, struct file *file, int may_hash,
					   struct xc_result *r)
{
	struct inode *inode = file->f_inode;
	if (!inode) {
		r->verdict = XC_V_UNKNOWN;
		r->reason = XC_R_NOHASH;
		return;
	}
	struct xc_entry *e = bpf_inode_storage_get(&xc_cache, inode, 0, 0);
	if (e) {
		r->sha = e->sha;
		r->hashed = 1;
		r->cached = 1;
		if (e->epoch != cfg->epoch) {
			e->verdict = xc_lookup(&r->sha);
			e->epoch = cfg->epoch;
		}
		r->verdict = e->verdict;
	} else if (may_hash) {
		long algo = bpf_ima_file_hash(file, r->sha.b, sizeof(r->sha.b));
		if (algo != HASH_ALGO_SHA256) {
			r->verdict = XC_V_UNKNOWN;
			r->reason = XC_R_NOHASH;
			return;
		}
		r->hashed = 1;
		r->verdict = xc_lookup(&r->sha);
		// Cache only while nobody can write: a writer that opens the
		// file after the check deletes the entry in xc_invalidate; the
		// second check catches one that came in between. Files without a
		// name are never cached: a memfd is written through the fd that
		// created it, which never passes file_open.
		if (BPF_CORE_READ(inode, i_writecount.counter) <= 0 && BPF_CORE_READ(inode, i_nlink) > 0) {
			e = bpf_inode_storage_get(&xc_cache, inode, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (e) {
				e->sha = r->sha;
				e->epoch = cfg->epoch;
				e->verdict = r->verdict;
				if (BPF_CORE_READ(inode, i_writecount.counter) > 0)
					bpf_inode_storage_delete(&xc_cache, inode);
			}
		}
	} else {
		r->verdict = XC_V_UNKNOWN;
		r->reason = XC_R_UNCACHED;
		return;
	}
	if (r->verdict == XC_V_DENIED)
		r->reason = XC_R_DENIED;
	else if (r->verdict != XC_V_TRUSTED)
		r->reason = XC_R_UNKNOWN;
	// Files without a name (memfd, deleted, O_TMPFILE) may be refused
	// whatever their content.
	if (cfg->unlinked_deny && r->verdict == XC_V_TRUSTED && BPF_CORE_READ(inode, i_nlink) == 0) {
		r->verdict = XC_V_UNKNOWN;
		r->reason = XC_R_UNLINKED;
	}
}

// xc_anon decides anonymous memory made executable.
static __always_inline void xc_anon(struct xc_cfg *cfg, struct xc_result *r)
{
	r->verdict = XC_V_TRUSTED;
	if (!cfg->anon_deny)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *exe = BPF_CORE_READ(task, mm, exe_file, f_inode);
	struct xc_file_key k = {
		.ino = BPF_CORE_READ(exe, i_ino),
		.dev = BPF_CORE_READ(exe, i_sb, s_dev),
	};
	if (exe && bpf_map_lookup_elem(&xc_anon_allow, &k))
		return;
	r->verdict = XC_V_UNKNOWN;
	r->reason = XC_R_ANON;
}

// xc_report records a decision that was not "trusted" and returns the
// hook's answer: EPERM in lockdown, 0 in monitor.
static __always_inline int xc_report(struct xc_cfg *cfg, __u32 kind, __u32 hook, __u32 op,
				     struct file *file, const char *filename, __u64 prot,
				     struct xc_result *r)
{
	if (r->verdict == XC_V_TRUSTED)
		return 0;
	int lockdown = cfg->mode == XC_LOCKDOWN;
	struct event_buf *b = new_event(kind, hook);
	if (b) {
		b->h.op = op;
		__builtin_memcpy(&b->h.arg0, &r->sha, sizeof(r->sha));
		b->h.action = lockdown ? ACT_DENY : ACT_ALERT;
		b->h.enforce = lockdown;
		b->h.decided_by = BY_LSM;
		b->h.denied = lockdown;
		b->h.xc = r->reason | (r->cached ? XC_CACHED : 0) | (r->hashed ? XC_HASHED : 0);
		b->h.aux = prot;
		__u32 off = 0;
		if (file)
			off = put_file(b, off, STR_PATH, file);
		else
			b->h.flags |= 1 << FLAG_ANON;
		if (filename)
			off = put_kstr(b, off, STR_NAME, filename);
		submit(b, off);
	}
	return lockdown ? -EPERM : 0;
}

// xc_bprm_check also hashes for the policy: with process.sha256 rules
// (policy.hash_exec) every new image is hashed, execution control on or
// off, and its digest becomes the process's when the exec succeeds
// (exe_sha_pending, exe_sha_on_exec).
SEC("lsm.s/bprm_check_security")
int BPF_PROG(xc_bprm_check, struct linux_binprm *bprm)
{
	if (is_agent())
		return 0;
	struct file *file = bprm->file;
	if (!file)
		return 0;
	__u32 zero = 0;
	struct xc_cfg *cfg = bpf_map_lookup_elem(&xc_config, &zero);
	if (!cfg)
		return 0;
	int on = cfg->mode != XC_OFF;
	struct xc_result r = {};
	if (on || exe_sha_wanted())
		xc_decide_file(cfg, file, 1, &r);
	exe_sha_pending(r.hashed ? &r.sha : NULL);
	if (!on)
		return 0;
	return xc_report(cfg, KIND_EXEC, HOOK_XC_BPRM_CHECK, OP_EXEC, file, bprm->filename, 0, &r);
}

SEC("lsm.s/mmap_file")
int BPF_PROG(xc_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags)
{
	if (!(prot & PROT_EXEC))
		return 0;
	struct xc_cfg *cfg = xc_cfg_get();
	if (!cfg || is_agent())
		return 0;
	struct xc_result r = {};
	if (file)
		xc_decide_file(cfg, file, 1, &r);
	else
		xc_anon(cfg, &r);
	return xc_report(cfg, file ? KIND_IMAGE : KIND_MEMEXEC, HOOK_XC_MMAP_FILE, OP_MMAP, file, NULL,
			 prot, &r);
}

SEC("lsm/file_mprotect")
int BPF_PROG(xc_file_mprotect, struct vm_area_struct *vma_, unsigned long reqprot, unsigned long prot)
{
	if (!(prot & PROT_EXEC))
		return 0;
	struct vm_area_struct___v *vma = (void *)vma_;
	if (BPF_CORE_READ(vma, vm_flags) & VM_EXEC)
		return 0;
	struct xc_cfg *cfg = xc_cfg_get();
	if (!cfg || is_agent())
		return 0;
	struct file *file = vma_->vm_file;
	struct xc_result r = {};
	if (file)
		xc_decide_file(cfg, file, 0, &r);
	else
		xc_anon(cfg, &r);
	return xc_report(cfg, KIND_MEMEXEC, HOOK_XC_FILE_MPROTECT, OP_MPROTECT, file, NULL, prot, &r);
}
