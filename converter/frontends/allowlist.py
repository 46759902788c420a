"""The TensorFlow ops a SavedModel may hold before the user vouches for it (``--trust-model``): data for audit.py.

Allowed: what tf2onnx converts, and what loading a SavedModel and calling an ordinary Keras or
``tf.Module`` export run besides (variables, resources, function calls), and what every saver
holds: checkpoint restore and save, and the string ops that build their file names. Every other
op is refused, known or not; the denied list names the ones that must stay out even if tf2onnx
learns to convert them, because they reach outside the process. The three ops that read or write
by path (``PATH_INPUTS``) are allowed only where audit.py proves their path is the loader's own
variables prefix, and the two that write (``WRITE_OPS``) only where nothing but a save runs them.
"""

from __future__ import annotations

# What tf2onnx 1.17.0 converts into plain ONNX (its handler registry, default domain), produced once with
#   python -c 'import tf2onnx.tfonnx; from tf2onnx.handler import tf_op;
#              print(sorted({op for v in tf_op.get_opsets()[""] for op in v if not op.startswith("TFL_")}))'
# (tfonnx imports every handler module tf2onnx.convert uses; TFL_* are TensorFlow Lite ops.)
# tests/frontends/test_audit.py checks this copy against the installed tf2onnx.
TF2ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add AddN AddV2 AdjustContrastv2 AdjustHue AdjustSaturation All Any ArgMax ArgMin AsString Asin Asinh Atan
    Atan2 Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchToSpaceND BiasAdd BiasAddV1 Bincount
    BitwiseAnd BitwiseOr BitwiseXor BroadcastTo CTCGreedyDecoder Cast Ceil CheckNumerics ClipByValue
    CombinedNonMaxSuppression ComplexAbs Concat ConcatV2 Const ConstV2 Conv1D Conv2D Conv2DBackpropInput Conv3D
    Conv3DBackpropInputV2 Cos Cosh CropAndResize CudnnRNN Cumprod Cumsum DenseBincount DenseToDenseSetOperation DepthToSpace
    DepthwiseConv2d DepthwiseConv2dNative Div DivNoNan Dropout DynamicPartition DynamicStitch Einsum Elu EnsureShape Equal
    Erf Exp ExpandDims ExtractImagePatches FFT FIFOQueueV2 FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars Fill Flatten
    Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd GatherV2 Greater GreaterEqual
    HardSwish HashTableV2 Identity IdentityN If Invert InvertPermutation IsFinite IsInf IsNan IteratorGetNext IteratorV2
    L2Normalization LRN LSTMBlockCell LeakyRelu LeftShift Less LessEqual Log LogSoftmax LogicalAnd LogicalNot LogicalOr
    LookupTableFindV2 LookupTableSizeV2 Loop MatMul MatrixBandPart MatrixDeterminant MatrixDiag MatrixDiagPart
    MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2
    MaxPoolWithArgmax Maximum Mean Min Minimum MirrorPad Mul Multinomial Neg NoOp NonMaxSuppressionV2 NonMaxSuppressionV3
    NonMaxSuppressionV4 NonMaxSuppressionV5 NotEqual OneHot OnesLike Pack Pad PadV2 ParallelDynamicStitch Placeholder
    PlaceholderV2 PlaceholderWithDefault Pow Prelu Prod QueueDequeueManyV2 QueueDequeueUpToV2 QueueDequeueV2 RFFT RFFT2D
    RaggedGather RaggedRange RaggedTensorFromVariant RaggedTensorToSparse RaggedTensorToTensor RaggedTensorToVariant
    RandomNormal RandomNormalLike RandomShuffle RandomStandardNormal RandomUniform RandomUniformInt RandomUniformLike Range
    RealDiv Reciprocal Relu Relu6 Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor ReverseSequence
    ReverseV2 RightShift Rint Roll Round Rsqrt SampleDistortedBoundingBox SampleDistortedBoundingBoxV2 Scan ScatterNd
    SegmentMax SegmentMean SegmentMin SegmentProd SegmentSum Select SelectV2 Selu Shape Sigmoid Sign Sin Sinh Size Slice
    Softmax SoftmaxCrossEntropyWithLogits Softplus Softsign SpaceToBatchND SpaceToDepth SparseFillEmptyRows SparseReshape
    SparseSegmentMean SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSqrtNWithNumSegments SparseSegmentSum
    SparseSegmentSumWithNumSegments SparseSoftmaxCrossEntropyWithLogits SparseToDense Split SplitV Sqrt Square
    SquaredDifference SquaredDistance Squeeze StatelessIf StatelessWhile StopGradient StridedSlice StringLower
    StringToNumber StringUpper Sub Sum Tan Tanh TensorListFromTensor TensorListGetItem TensorListLength TensorListReserve
    TensorListResize TensorListSetItem TensorListStack TensorScatterAdd TensorScatterMax TensorScatterMin TensorScatterSub
    TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv Unique UniqueWithCounts Unpack UnsortedSegmentMax
    UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum Where While ZerosLike
    """.split()
)

# What loading a SavedModel and calling an ordinary export run besides, each one in-process only:
# variables, function calls, resource lifetime, lookup tables filled from tensors, the ops our
# front end converts itself (Erfc) or tf2onnx rewrites while freezing (ResourceGather), and the
# string ops and copy-on-read switch of the saver's save function (a file name, built in memory).
LOADING_OPS = frozenset(
    """
    VarHandleOp ReadVariableOp AssignVariableOp VarIsInitializedOp DestroyResourceOp ResourceGather DisableCopyOnRead
    PartitionedCall StatefulPartitionedCall
    Identity IdentityN NoOp Placeholder Const
    HashTableV2 LookupTableImportV2
    StringJoin ShardedFilename StaticRegexFullMatch
    Erfc
    """.split()
)

# The ops that read or write files by path, with the inputs that hold the paths: the saver's.
# Allowed only with the loader's own variables prefix (audit.py checks where each path comes from).
PATH_INPUTS: dict[str, tuple[int, ...]] = {
    "RestoreV2": (0,),  # prefix
    "SaveV2": (0,),  # prefix
    "MergeV2Checkpoints": (0, 1),  # checkpoint_prefixes, destination_prefix
}
# Those that write (and MergeV2Checkpoints deletes): allowed only where nothing but a save runs them.
WRITE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints"})

# Never allowed, whoever converts them: they reach outside the process (files, the terminal or a
# log file, Python, the network) or read from queues and datasets that load data.
DENIED_OPS = frozenset(
    """
    ReadFile WriteFile MatchingFiles Save SaveSlices Restore RestoreSlice ImmutableConst
    InitializeTableFromTextFile InitializeTableFromTextFileV2 WholeFileReader WholeFileReaderV2 TextLineReader
    TextLineReaderV2 FixedLengthRecordReader FixedLengthRecordReaderV2 TFRecordReader TFRecordReaderV2 ReaderReadV2
    ReaderReadUpToV2 LoadAndRemapMatrix DecodeProtoV2 EncodeProto
    PyFunc PyFuncStateless EagerPyFunc
    Print PrintV2
    DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary DebugNumericSummaryV2
    WriteSummary WriteScalarSummary WriteHistogramSummary WriteImageSummary WriteAudioSummary WriteGraphSummary
    WriteRawProtoSummary CreateSummaryFileWriter CreateSummaryDbWriter SummaryWriter FlushSummaryWriter
    CloseSummaryWriter ImportEvent
    FIFOQueueV2 PaddingFIFOQueueV2 PriorityQueueV2 RandomShuffleQueueV2 QueueEnqueueV2 QueueEnqueueManyV2
    QueueDequeueV2 QueueDequeueManyV2 QueueDequeueUpToV2
    IteratorV2 IteratorGetNext IteratorGetNextSync AnonymousIteratorV3 MakeIterator OneShotIterator
    TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset FixedLengthRecordDatasetV2
    DatasetFromGraph
    """.split()
)

ALLOWED_OPS = (TF2ONNX_OPS | LOADING_OPS | frozenset(PATH_INPUTS)) - DENIED_OPS
