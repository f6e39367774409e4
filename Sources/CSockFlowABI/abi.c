// SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause)
/* Compile-time checks of the ABI as the host compiler sees it. The BPF side's
 * layout is checked against these sizes by SockFlowTests/ABILayoutTests, which
 * reads struct sf_event from the BTF of the embedded BPF object. */
#include <stddef.h>
#include "sockflow_abi.h"

_Static_assert(sizeof(struct sf_hdr) == 24, "struct sf_hdr changed size");
_Static_assert(sizeof(struct sf_sock) == 56, "struct sf_sock changed size");
_Static_assert(sizeof(struct sf_task) == 120, "struct sf_task changed size");
_Static_assert(sizeof(struct sf_event) == 256, "struct sf_event changed size");
_Static_assert(sizeof(struct sf_flow_state) == 64, "struct sf_flow_state changed size");
_Static_assert(sizeof(struct sf_listener_key) == 24, "struct sf_listener_key changed size");
_Static_assert(offsetof(struct sf_event, sock) == 24, "sf_event.sock moved");
_Static_assert(offsetof(struct sf_event, task) == 80, "sf_event.task moved");
_Static_assert(sizeof(struct sf_event) % 8 == 0, "records must keep 8-byte alignment");
_Static_assert(sizeof(struct sf_rule) % 8 == 0, "rules must keep 8-byte alignment");
_Static_assert(SF_HOOK_SOCKET == 1 << (SF_HOOK_COUNT - 1), "hook bits and SF_HOOK_COUNT disagree");
