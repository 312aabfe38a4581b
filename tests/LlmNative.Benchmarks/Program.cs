using System;
using LlmNative.Benchmarks;
using LlmNative.Benchmarks.Onnx;
OrtModels.InitEnvironment(2);
return SelfCheck.Run(Console.Out) ? 0 : 1;
