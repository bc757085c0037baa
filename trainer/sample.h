/* sample.h - `trainer sample`, `trainer caption` and `trainer sample-bench`
 * (sample.c): generation from a checkpoint. */
#ifndef TRAINER_SAMPLE_H
#define TRAINER_SAMPLE_H

#include "../common/cli.h"

extern const cli_command sample_command, caption_command, sample_bench_command;

#endif
