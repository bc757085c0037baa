/* train.h - `trainer train`: the training run (train.c). */
#ifndef TRAINER_TRAIN_H
#define TRAINER_TRAIN_H

#include "../common/cli.h"

int trainer_cmd_train(const args *a);

#endif
