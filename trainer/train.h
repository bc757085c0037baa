/* train.h - `trainer train`: the training run (train.c). */
#ifndef TRAINER_TRAIN_H
#define TRAINER_TRAIN_H

#include "../common/cli.h"

extern const cli_command train_command;

#endif
