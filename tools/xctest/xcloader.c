// xcloader: execution control's test helper for the dlopen path (the VM
// tests run it). `xcloader PATH` dlopen()s PATH and calls its
// vigil_xctest() function: exit 0 and "loaded: N" when the library was
// mapped and ran, exit 1 and dlerror()'s text when it was refused.
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: xcloader LIBRARY\n");
		return 2;
	}
	void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "%s\n", dlerror());
		return 1;
	}
	int (*fn)(void) = (int (*)(void))dlsym(h, "vigil_xctest");
	if (!fn) {
		fprintf(stderr, "%s\n", dlerror());
		return 1;
	}
	printf("loaded: %d\n", fn());
	return 0;
}
