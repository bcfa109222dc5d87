"""Analysis scripts that regenerate the paper's figures and tables from a results tree."""
