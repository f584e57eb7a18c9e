package cuda

import "fmt"

// Compute selects how float32 GEMMs use the tensor cores.
type Compute int

// GEMM compute modes. bf16 operands always accumulate in float32.
const (
	ComputeFP32 Compute = iota // IEEE float32 arithmetic
	ComputeTF32                // float32 operands rounded to TF32 on the tensor cores
)

// cuBLAS data and compute type codes.
const (
	cudaR32F           = 0
	cudaR16BF          = 14
	cublasCompute32F   = 68
	cublasCompute32FTF = 77
)

func cudaType(t DType) (int, error) {
	switch t {
	case F32:
		return cudaR32F, nil
	case BF16:
		return cudaR16BF, nil
	}
	return 0, fmt.Errorf("cuda: GEMM on %v data", t)
}

// Gemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices, with the
// same arguments as a row-major BLAS sgemm: op(A) is M×K, op(B) is K×N, C is M×N;
// lda, ldb, ldc are row strides. A and B are both float32 or both bfloat16; C is
// float32 or bfloat16; accumulation is float32 (TF32 on the tensor cores when
// mode is ComputeTF32 and the operands are float32).
func (c *Ctx) Gemm(transA, transB bool, M, N, K int, alpha float32, A Buf, lda int, B Buf, ldb int,
	beta float32, Cm Buf, ldc int, mode Compute) error {
	if M <= 0 || N <= 0 || K <= 0 {
		return fmt.Errorf("cuda: GEMM of shape %dx%dx%d", M, N, K)
	}
	if A.DType != B.DType {
		return fmt.Errorf("cuda: GEMM operands of types %v and %v", A.DType, B.DType)
	}
	at, err := cudaType(A.DType)
	if err != nil {
		return err
	}
	ct, err := cudaType(Cm.DType)
	if err != nil {
		return err
	}
	if err := fits("A", A, transA, M, K, lda); err != nil {
		return err
	}
	if err := fits("B", B, transB, K, N, ldb); err != nil {
		return err
	}
	if err := fits("C", Cm, false, M, N, ldc); err != nil {
		return err
	}
	compute := cublasCompute32F
	if mode == ComputeTF32 && A.DType == F32 {
		compute = cublasCompute32FTF
	}
	// Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: swap the operands.
	return blasGemmEx(c.blas, transB, transA, N, M, K, alpha, B.Ptr, at, ldb, A.Ptr, at, lda, beta, Cm.Ptr, ct, ldc, compute)
}

// fits checks that b holds an operand used as a rows×cols matrix, stored
// transposed when trans, with row stride ld.
func fits(name string, b Buf, trans bool, rows, cols, ld int) error {
	if trans {
		rows, cols = cols, rows
	}
	if ld < cols {
		return fmt.Errorf("cuda: GEMM %s: row stride %d < %d columns", name, ld, cols)
	}
	if need := (rows-1)*ld + cols; need > b.N {
		return fmt.Errorf("cuda: GEMM %s: %dx%d with stride %d needs %d elements, buffer has %d", name, rows, cols, ld, need, b.N)
	}
	return nil
}
