# rasa: the whole pipeline, from data to LaTeX tables, as one DAG.
#   snakemake --profile workflow/profiles/local                      # the default suite (quick)
#   snakemake --profile workflow/profiles/slurm --config suite=paper # the paper grid on SLURM
#   snakemake --profile workflow/profiles/local --config suite=synth assemble=True
#       # a suite's report from the committed results of the parts it was run in (no training)
# The suite, datasets, experiments and resources all come from params.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


# assembling reads the parts' committed metrics and the committed pre-trained export: with no
# rule to remake them, Snakemake takes them as source files and trains nothing
if not ASSEMBLE:

    include: "workflow/rules/pretrain.smk"
    include: "workflow/rules/train.smk"


include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.report,
