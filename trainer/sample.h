/* sample.h - `trainer sample`, `trainer caption` and `trainer sample-bench`
 * (sample.c): generation from a checkpoint. */
#ifndef TRAINER_SAMPLE_H
#define TRAINER_SAMPLE_H

#include "../common/cli.h"

int trainer_cmd_sample(const args *a);
int trainer_cmd_caption(const args *a);
int trainer_cmd_sample_bench(const args *a);

#endif
