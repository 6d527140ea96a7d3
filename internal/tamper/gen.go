package tamper

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I../../bpf/include" -target bpfel -type tamper_event -type tamper_method -type tamper_hook -type tamper_cfg -type file_key -type obj_key -type prot_kind -type obj_type -type cg_kind tamperobj tamper.bpf.c
