/* The bpftool skeleton of bpf/sockflow.bpf.c, which embeds the BPF object: nothing
 * is looked up on disk at run time. `make` generates sockflow.skel.h before
 * SwiftPM runs; a plain `swift build` in a fresh clone stops here with
 * "'sockflow.skel.h' file not found": run `make` first. */
#ifndef CSOCKFLOWSKEL_H
#define CSOCKFLOWSKEL_H
#include "sockflow_abi.h" /* the skeleton names struct sf_config */
#include "sockflow.skel.h"
#endif
