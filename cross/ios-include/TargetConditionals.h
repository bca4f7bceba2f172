/* A stand-in for the iOS SDK's TargetConditionals.h, for `npm run cross` on Linux, where no Apple
 * SDK can be had: the macros C code reads to tell an iPhone build (ring's base.h). The release
 * workflow builds iOS on macOS with the real SDK. */
#ifndef KEYNET_TARGET_CONDITIONALS_H
#define KEYNET_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 0
#define TARGET_OS_IPHONE 1
#define TARGET_OS_IOS 1
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#endif
