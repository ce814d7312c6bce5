#include <seccomp.h>

/// libseccomp's action macros are function-like; Swift cannot import them.
static inline uint32_t vessel_scmp_act_errno(uint16_t e) { return SCMP_ACT_ERRNO(e); }
static inline uint32_t vessel_scmp_act_trace(uint16_t m) { return SCMP_ACT_TRACE(m); }
