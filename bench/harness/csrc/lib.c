// lib: the shared library the dlopen benchmark maps. One exported function
// and no dependencies, so dlopen maps it (a PROT_EXEC mapping of its text)
// and dlclose unmaps it again.
int vigil_bench_lib(int x)
{
	return x + 1;
}
