// target: the small static binary the exec benchmarks run. It does nothing
// and exits 0, so the time measured is the kernel's fork, exec and exit
// path (and whatever a security agent adds to it).
int main(void)
{
	return 0;
}
