// libxctest.so: the shared library execution control's VM tests load with
// dlopen (xcloader) and LD_PRELOAD.
int vigil_xctest(void)
{
	return 42;
}
