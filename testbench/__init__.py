"""cocotb testbenches run under Verilator, and the Verilator backend for program runs."""
