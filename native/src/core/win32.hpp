// <windows.h> for the few files that call the Win32 API (library path, cache size, fiber-local slots),
// without its min/max macros and rarely used parts. Include only under #if defined(_WIN32).
#pragma once
#define WIN32_LEAN_AND_MEAN
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
