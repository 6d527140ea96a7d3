package bpfsensor

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I../../../bpf/include" -target bpfel -type event_hdr -type event_kind -type event_op -type event_hook sensor sensor.bpf.c
