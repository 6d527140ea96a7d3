package bpfsensor

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I../../../bpf/include" -target bpfel -type event_hdr -type event_kind -type event_op -type event_hook -type rule -type cond_bit -type verdict_action -type path_key -type path_bits -type cgroup_key -type policy_cfg -type proc_facts -type xc_cfg -type xc_entry -type xc_digest -type xc_file_key -type xc_mode -type xc_verdict -type sha_key -type exe_sha -type exe_sha_flag sensor sensor.bpf.c
