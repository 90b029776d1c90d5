/*
 * main.c: the `chainsync` program's entry point: finds the command and runs it.
 */
#include "log/log.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    return 0;
}
