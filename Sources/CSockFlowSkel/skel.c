/* SwiftPM needs one source file per C target; the skeleton is header-only. */
#include "CSockFlowSkel.h"
