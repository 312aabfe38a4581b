// Every log message LlmNative's managed code writes, source-generated ([LoggerMessage]) so a disabled
// level costs one IsEnabled check and no formatting or boxing.
using Microsoft.Extensions.Logging;

namespace LlmNative;

internal static partial class Log
{
    [LoggerMessage(EventId = 1, EventName = "NativeContextLine", Message = "[context {ContextId}] {NativeMessage}")]
    public static partial void NativeContextLine(ILogger logger, LogLevel level, ulong contextId, string nativeMessage);

    [LoggerMessage(EventId = 2, EventName = "NativeProcessLine", Message = "{NativeMessage}")]
    public static partial void NativeProcessLine(ILogger logger, LogLevel level, string nativeMessage);

    [LoggerMessage(EventId = 3, EventName = "BackendChosen", Level = LogLevel.Information,
        Message = "Using the {Backend} backend (device {Device}): {Reason}")]
    public static partial void BackendChosen(ILogger logger, Backend backend, int device, string reason);
}
