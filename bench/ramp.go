package bench

// Analyze fills MaxZeroLoss, MachineMax and LossFree from the steps, taken
// in the order they ran (rising rates, the unpaced step last).
func (r *Ramp) Analyze() {
	r.MaxZeroLoss, r.MachineMax, r.LossFree = 0, 0, true
	for _, s := range r.Steps {
		if s.Target == 0 {
			r.MachineMax = max(r.MachineMax, s.Achieved)
		}
		if s.Lost > 0 {
			r.LossFree = false
		}
		if r.LossFree {
			r.MaxZeroLoss = max(r.MaxZeroLoss, s.Achieved)
		}
	}
	if r.MachineMax == 0 {
		for _, s := range r.Steps {
			r.MachineMax = max(r.MachineMax, s.Achieved)
		}
	}
}
