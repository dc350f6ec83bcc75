/* SPDX-License-Identifier: MIT */
/*
 * Runs the fuzz harness over files without libFuzzer (any compiler), so the
 * seed corpus and past crashers are regression tests in every build.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
	static uint8_t buf[1 << 20];
	int n = 0;

	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f) {
			perror(argv[i]);
			return 1;
		}
		size_t len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, len);
		/* Every prefix too: truncated sessions exercise fini/abort paths. */
		for (size_t k = 0; k < len; k += 7)
			LLVMFuzzerTestOneInput(buf, k);
		n++;
	}
	printf("replayed %d inputs\n", n);
	return n > 0 ? 0 : 1;
}
